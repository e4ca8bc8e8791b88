"""How well a set of PQ codes uses its code space, and whether it has collapsed.

A product-quantization encoder can collapse: every item gets (nearly) the same code, and retrieval
ranks at chance while training, validation and encoding all "succeed" (200 face photos at
``train.batch_size = 128``, one step per epoch, gave every item one code). :func:`code_usage`
measures, for codes of shape (N, M) with K codewords per book:

- ``distinct_codes``: the number of different code rows, and ``distinct_fraction``, that number
  over the most there could be, ``min(N, K**M)``;
- ``perplexity`` per book: ``exp(H)`` of the book's codeword frequencies, the number of codewords
  the book effectively uses (1 = one codeword for every item, K = all used equally);
- ``used_codewords`` per book: the codewords given to at least one item.

The codes are *degenerate* (:attr:`CodeUsage.degenerate`) when

- a book's perplexity is below ``min(MIN_BOOK_PERPLEXITY, 1 + (min(N, K) - 1) / 2)``: with the
  default 2, the book effectively uses fewer than two codewords, i.e. carries less than one bit
  (the bound is lowered when K = 2 or N is tiny, where a perplexity of 2 is the most there is); or
- fewer than ``max(2, MIN_DISTINCT_FRACTION * min(N, K**M))`` distinct codes are used (default
  1 %), or just one for more than one item: items are not told apart.

The thresholds flag collapse, not mediocrity: a weak but working encoder passes them.

Codes can also be *coarse* for their database without having collapsed (:attr:`CodeUsage.coarse`):
items with the same code have the same ADC distance to every query, so where a group of tied
items is larger than the ``TIE_GROUP`` (10) results a user looks at, which of them are shown is
decided by their order in the index, not by what they show. The codes are coarse when more than
``MAX_TIED_SHARE`` (10 %) of the items sit in such groups. Example: 3,000 crops of photographs
encoded at 32 bits into 762 distinct codes, the largest shared by 132 items, 54 % of the items
in groups larger than 10: P@10 0.634 by ADC against 0.731 with refinement
(``benchmarks/results/top10-probes``). The remedies: an index that refines (``quantrieve encode
--refine-depth 100``), more bits, longer training.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from quantrieve.config import ModelConfig
from quantrieve.errors import QuantrieveWarning

MIN_BOOK_PERPLEXITY = 2.0
MIN_DISTINCT_FRACTION = 0.01
TIE_GROUP = 10
MAX_TIED_SHARE = 0.10
# What a warning about degenerate codes advises.
COLLAPSE_ADVICE = (
    "retrieval with these codes ranks close to chance; train with more optimisation steps "
    "(a smaller train.batch_size or more train.epochs, see the steps-per-epoch warning), "
    "check that the images differ, or lower train.lr; a soft assignment sharper than the "
    f"default (model.tau_sq below {ModelConfig.tau_sq}) collapses codes too"
)


@dataclass(frozen=True)
class CodeUsage:
    """Usage statistics of PQ codes (see the module docstring).

    Attributes:
        num_items: N, the number of code rows.
        num_codewords: K.
        distinct_codes: the number of different code rows.
        perplexity: per book, ``exp`` of the entropy (natural log) of its codeword frequencies.
        used_codewords: per book, the number of codewords given to at least one item.
        largest_group: the most items that share one code.
        items_in_large_groups: items whose code is shared by more than ``TIE_GROUP`` items.
    """

    num_items: int
    num_codewords: int
    distinct_codes: int
    perplexity: list[float]
    used_codewords: list[int]
    largest_group: int = 0
    items_in_large_groups: int = 0

    @property
    def num_books(self) -> int:
        return len(self.perplexity)

    @property
    def capacity(self) -> int:
        """The most distinct codes N items can have: ``min(N, K**M)``."""
        return min(self.num_items, self.num_codewords**self.num_books)

    @property
    def distinct_fraction(self) -> float:
        """``distinct_codes / min(N, K**M)`` (1.0 for no items)."""
        return self.distinct_codes / self.capacity if self.capacity else 1.0

    @property
    def min_perplexity(self) -> float:
        return min(self.perplexity) if self.perplexity else 0.0

    @property
    def mean_perplexity(self) -> float:
        return sum(self.perplexity) / len(self.perplexity) if self.perplexity else 0.0

    @property
    def book_floor(self) -> float:
        """Perplexity below which a book counts as collapsed (see the module docstring)."""
        most = min(self.num_items, self.num_codewords)
        return min(MIN_BOOK_PERPLEXITY, 1 + (most - 1) / 2)

    @property
    def distinct_floor(self) -> float:
        """Distinct codes below which the codes count as collapsed."""
        return max(2.0, MIN_DISTINCT_FRACTION * self.capacity) if self.num_items > 1 else 0.0

    def warnings(self) -> list[str]:
        """One sentence per sign of collapse; empty when the codes are not degenerate (always
        for fewer than two items)."""
        if self.num_items < 2:
            return []
        found = []
        if self.distinct_codes < self.distinct_floor:
            found.append(
                f"only {self.distinct_codes} distinct code{'s' if self.distinct_codes != 1 else ''}"
                f" for {self.num_items} items ({self.distinct_fraction:.1%} of the "
                f"{self.capacity} possible)"
            )
        low = [m for m, p in enumerate(self.perplexity) if p < self.book_floor]
        if low:
            shown = ", ".join(map(str, low[:8])) + (", ..." if len(low) > 8 else "")
            worst = min(self.perplexity[m] for m in low)
            found.append(
                f"{len(low)} of {self.num_books} books (book {shown}) effectively use fewer than "
                f"{self.book_floor:g} of their {self.num_codewords} codewords (lowest usage "
                f"perplexity {worst:.2f})"
            )
        return found

    @property
    def tied_share(self) -> float:
        """The share of items in groups of more than ``TIE_GROUP`` items with one code."""
        return self.items_in_large_groups / self.num_items if self.num_items else 0.0

    @property
    def coarse(self) -> bool:
        """More than ``MAX_TIED_SHARE`` of the items tie with more than ``TIE_GROUP`` others
        (see the module docstring)."""
        return self.tied_share > MAX_TIED_SHARE

    def coarse_message(self, what: str, refine_depth: int = 0) -> str:
        """One line for a warning about coarse codes, with the numbers and the remedies."""
        ties = (
            f"{what}: codes are coarse for {self.num_items:,} items: {self.distinct_codes:,} "
            f"distinct codes ({self.num_items / max(1, self.distinct_codes):.1f} items per "
            f"code), the largest group of items with one code holds {self.largest_group:,}, "
            f"and {self.tied_share:.0%} of the items are in groups larger than {TIE_GROUP}, "
            f"where a top {TIE_GROUP} by ADC is decided by the items' order, not their images"
        )
        if refine_depth:
            return (
                f"{ties}; this index re-scores its first {refine_depth} results with its "
                "stored float16 vectors, which orders them (more bits or longer training would "
                "make the codes themselves finer)"
            )
        return (
            f"{ties}; encode with --refine-depth 100 (the first 100 results re-scored with a "
            "stored float16 vector of each item, 2 bytes a dimension), use more bits (--bits "
            "64), or train longer"
        )

    @property
    def degenerate(self) -> bool:
        """Whether the codes show a sign of collapse (:meth:`warnings` is not empty)."""
        return bool(self.warnings())

    def message(self, what: str) -> str:
        """One line for a warning: ``"<what>: codes have collapsed: <signs>; <advice>"``."""
        return f"{what}: codes have collapsed: {'; '.join(self.warnings())}; {COLLAPSE_ADVICE}"

    def to_dict(self) -> dict:
        """The statistics as JSON-ready values (for logs and index.json)."""
        return {
            "num_items": self.num_items,
            "distinct_codes": self.distinct_codes,
            "distinct_fraction": round(self.distinct_fraction, 6),
            "perplexity": [round(p, 4) for p in self.perplexity],
            "min_perplexity": round(self.min_perplexity, 4),
            "mean_perplexity": round(self.mean_perplexity, 4),
            "used_codewords": list(self.used_codewords),
            "num_codewords": self.num_codewords,
            "degenerate": self.degenerate,
            "largest_group": self.largest_group,
            "tied_share": round(self.tied_share, 6),
            "coarse": self.coarse,
        }


def code_usage(codes: np.ndarray | torch.Tensor, num_codewords: int) -> CodeUsage:
    """Distinct codes and per-book usage perplexity of PQ codes.

    Args:
        codes: integer codes (N, M), each in [0, num_codewords); a tensor may be on any device.
        num_codewords: K.

    Returns:
        The :class:`CodeUsage`.

    Raises:
        ValueError: codes that are not (N, M) or hold a codeword >= K.
    """
    if isinstance(codes, torch.Tensor):
        codes = codes.detach().cpu().numpy()
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be (N, M), got shape {codes.shape}")
    n, m = codes.shape
    if n and (codes.min() < 0 or codes.max() >= num_codewords):
        raise ValueError(
            f"codes must lie in [0, {num_codewords}), got {codes.min()}..{codes.max()}"
        )
    perplexity, used = [], []
    for book in range(m):
        counts = np.bincount(codes[:, book].astype(np.int64), minlength=num_codewords)
        used.append(int((counts > 0).sum()))
        p = counts[counts > 0] / max(n, 1)
        perplexity.append(float(math.exp(-(p * np.log(p)).sum())) if n else 0.0)
    rows = np.ascontiguousarray(codes.astype(np.int64 if num_codewords > 256 else np.uint8))
    if n:
        keys = rows.view(np.dtype((np.void, rows.itemsize * m))).ravel()
        counts = np.unique(keys, return_counts=True)[1]
        distinct, largest = len(counts), int(counts.max())
        tied = int(counts[counts > TIE_GROUP].sum())
    else:
        distinct = largest = tied = 0
    return CodeUsage(n, num_codewords, distinct, perplexity, used, largest, tied)


def check_code_usage(
    codes: np.ndarray | torch.Tensor,
    num_codewords: int,
    what: str,
    stacklevel: int = 2,
    refine_depth: int = 0,
) -> CodeUsage:
    """:func:`code_usage`, with a :class:`~quantrieve.errors.QuantrieveWarning` if degenerate,
    or else if coarse (:attr:`CodeUsage.coarse`).

    Args:
        codes: integer codes (N, M).
        num_codewords: K.
        what: what the codes are, to start the warning (e.g. ``"encoded database"``).
        stacklevel: passed to :func:`warnings.warn` (2: the caller of this function).
        refine_depth: R of an index that refines (0: none), said in the coarse warning.
    """
    usage = code_usage(codes, num_codewords)
    if usage.degenerate:
        warnings.warn(usage.message(what), QuantrieveWarning, stacklevel=stacklevel + 1)
    elif usage.coarse:
        warnings.warn(
            usage.coarse_message(what, refine_depth), QuantrieveWarning, stacklevel=stacklevel + 1
        )
    return usage
