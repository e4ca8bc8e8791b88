"""A label-free validation signal: can an augmented copy of an image find the image?

Each of a sample of database images is augmented (as in training) and embedded; the copy is
searched among the database's codes by ADC, and the original's rank is recorded. A model whose
codes separate images and are invariant to the augmentations ranks the original first; collapsed
codes tie it with many others. Ties count at their average position, so a code shared by 50
items ranks its owner about 25th, not first.

This is instance retrieval, not class retrieval: it needs no labels, so it can watch the
training of an unlabelled folder. How closely it tracks labelled validation mAP and P@10 is
measured in ``docs/results.md`` ("Choosing an epoch without labels").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from quantrieve.pq import adc_distances, lookup_tables

#: The rank an original must reach for a copy to count as found (what a user looks at).
SELF_TOP = 10


@dataclass(frozen=True)
class SelfRetrieval:
    """How well augmented copies find their originals.

    Attributes:
        recall_at_1: share of copies whose original ranks first.
        recall_at_10: share whose original is within the first :data:`SELF_TOP`.
        mean_rank: mean rank of the originals (1 = first; ties at their average position).
        queries: number of copies searched.
    """

    recall_at_1: float
    recall_at_10: float
    mean_rank: float
    queries: int

    def to_dict(self) -> dict[str, float]:
        return {
            "self_recall_at_1": self.recall_at_1,
            "self_recall_at_10": self.recall_at_10,
            "self_mean_rank": self.mean_rank,
            "self_queries": self.queries,
        }


def self_retrieval(
    copies: torch.Tensor,
    codebooks: torch.Tensor,
    codes: torch.Tensor,
    originals: np.ndarray,
    distance: str = "l2",
) -> SelfRetrieval:
    """Ranks of the originals (rows ``originals`` of ``codes``) for their copies' embeddings.

    Args:
        copies: float (Q, M*d) embeddings of augmented copies.
        codebooks: float (M, K, d).
        codes: uint8 (N, M) database codes.
        originals: int (Q,) the database row of each copy's original.
        distance: ``l2`` or ``sqeuclidean`` (the same order).
    """
    tables = lookup_tables(copies.float(), codebooks.float(), distance)  # l2: same order
    dists = adc_distances(tables, codes)  # (Q, N)
    rows = torch.from_numpy(np.asarray(originals, dtype=np.int64))
    own = dists.gather(1, rows[:, None])
    closer = (dists < own).sum(1).double()
    tied = (dists == own).sum(1).double()  # the original included
    ranks = closer + (tied + 1) / 2
    return SelfRetrieval(
        recall_at_1=float((ranks <= 1).double().mean()),
        recall_at_10=float((ranks <= SELF_TOP).double().mean()),
        mean_rank=float(ranks.mean()),
        queries=len(rows),
    )
