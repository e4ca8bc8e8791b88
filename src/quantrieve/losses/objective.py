"""The training objective: a weighted sum of named terms, every term returned for logging.

HQC [Wu et al., BMVC 2023]: L = w_icf L_icf + w_icz L_icz + w_cc L_cc + w_pn L_pn + w_cd L_cd.
SPQ [Jang & Cho, ICCV 2021]: L = w_xqc L_xqc (cross-quantized contrastive).
Terms with weight 0 are not computed. With multi-crop's extra small views [Caron et al., SwAV,
NeurIPS 2020], every pairwise term is averaged over the pairs of one of the two main views with
any other view, as in DINO [Caron et al., ICCV 2021], and L_cd is taken over every view
(:meth:`Objective.over_views`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from quantrieve.config import LOSS_TERMS, LossConfig
from quantrieve.losses.consistency import consistent_contrastive
from quantrieve.losses.contrastive import cross_quantized_contrastive, nt_xent
from quantrieve.losses.part import codeword_diversity, part_neighbour_consistency

#: The objective's terms, in the order it returns them (:data:`quantrieve.config.LOSS_TERMS`).
TERMS = LOSS_TERMS


def fuse(f: Tensor, z: Tensor, fusion: str) -> Tensor:
    """The feature L_cc compares: ``sum`` (f + z, HQC's default), ``concat``, f or z alone."""
    if fusion == "sum":
        return f + z
    if fusion == "concat":
        return torch.cat([f, z], dim=1)
    if fusion == "embedding":
        return f
    if fusion == "quantized":
        return z
    raise ValueError(f"unknown fusion '{fusion}'")


class Objective:
    """Computes the configured loss terms on the views' (f, z): the two views of each image,
    and multi-crop's small views if any (:meth:`over_views`).

    Args:
        config: Weights, temperatures, top-N and fusion.
        num_books: M, for the part-level terms.
    """

    def __init__(self, config: LossConfig, num_books: int) -> None:
        config.validate()
        self.config = config
        self.num_books = num_books
        self.weights = {name: float(w) for name, w in config.weights().items()}

    def __call__(
        self, f_a: Tensor, f_b: Tensor, z_a: Tensor, z_b: Tensor, codebooks: Tensor
    ) -> dict[str, Tensor]:
        """Returns ``{"loss": total, term: value, ...}`` for every term with weight > 0.

        Args:
            f_a, f_b: (B, M*d) embeddings of the two views (whole, gathered batch).
            z_a, z_b: (B, M*d) their soft quantizations.
            codebooks: (M, K, d) trainable codebooks (for L_cd).
        """
        return self.over_views([f_a, f_b], [z_a, z_b], codebooks)

    def over_views(
        self, f: Sequence[Tensor], z: Sequence[Tensor], codebooks: Tensor
    ) -> dict[str, Tensor]:
        """The terms over any number (>= 2) of views: each pairwise term (icf, icz, cc, pn, xqc)
        averaged over the pairs (view 0, view 1), then (view 0, v) and (view 1, v) for every
        small view v >= 2; L_cd, a term of the batch's codeword usage, once over every view's
        embeddings. With two views this is the objective of the papers.

        Args:
            f, z: per view, (B, M*d) embeddings and soft quantizations, rows aligned by image;
                the two main views first.
            codebooks: (M, K, d) trainable codebooks (for L_cd).
        """
        if len(f) != len(z) or len(f) < 2:
            raise ValueError(
                f"need the same number (>= 2) of f and z views, got {len(f)}, {len(z)}"
            )
        pairs = [(0, 1)] + [(g, v) for v in range(2, len(f)) for g in (0, 1)]
        per_pair = [self._pair_terms(f[a], f[b], z[a], z[b]) for a, b in pairs]
        found = per_pair[0]
        if len(per_pair) > 1:
            found = {name: sum(t[name] for t in per_pair) / len(per_pair) for name in found}
        if self.weights["cd"] > 0:
            found["cd"] = codeword_diversity(torch.cat(list(f)), codebooks)
        terms = {name: found[name] for name in TERMS if name in found}
        total = sum(self.weights[name] * value for name, value in terms.items())
        return {"loss": total, **terms}  # type: ignore[dict-item]

    def _pair_terms(self, f_a: Tensor, f_b: Tensor, z_a: Tensor, z_b: Tensor) -> dict[str, Tensor]:
        """The pairwise terms with weight > 0 on one pair of views."""
        c, w = self.config, self.weights
        terms: dict[str, Tensor] = {}
        if w["icf"] > 0:
            terms["icf"] = nt_xent(f_a, f_b, c.tau_ic)
        if w["icz"] > 0:
            terms["icz"] = nt_xent(z_a, z_b, c.tau_ic)
        if w["cc"] > 0:
            terms["cc"] = consistent_contrastive(
                fuse(f_a, z_a, c.fusion), fuse(f_b, z_b, c.fusion), c.tau_cc
            )
        if w["pn"] > 0:
            terms["pn"] = part_neighbour_consistency(z_a, z_b, self.num_books, c.top_n, c.tau_pn)
        if w["xqc"] > 0:
            terms["xqc"] = cross_quantized_contrastive(f_a, f_b, z_a, z_b, c.tau_xqc)
        return terms
