"""Refinement: the head of an ADC ranking re-scored with a finer copy of each item.

PQ codes of 32 bits tie often: every item that shares a query's best code gets the same ADC
distance, and the top 10 of a ranking is then decided by the items' positions, not by what they
show. An index may keep a finer copy of each item's embedding (``float16``, 2 bytes a
dimension); a search takes the first R items of the ADC ranking (ties by index, as every
ranking in quantrieve), computes their distances to the query embedding from the finer copy,
and orders those R by (fine distance, item index). Items after the first R keep their ADC order
and distances. The refined distance uses the same metric as the ADC ranking: ``l2`` (not
squared) or ``sqeuclidean``. This is the re-ranking stage of faiss's ``IndexRefine`` with
R = k_factor * k fixed as a depth instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Storage types of the finer copy, by name (index.json ``refine_dtype``).
REFINE_DTYPES = {"float16": torch.float16}


def refine_head(
    queries: Tensor, candidates: Tensor, fine: Tensor, depth: int, distance: str = "l2"
) -> tuple[Tensor, Tensor]:
    """Re-score and re-order the first ``depth`` candidates of each query.

    Args:
        queries: (Q, D) query embeddings.
        candidates: (Q, C) int64 item numbers in ADC order (the first C of each ranking).
        fine: (N, D) the finer copy of every item (any float dtype).
        depth: R, how many of the first candidates are re-scored (all of them if C <= R).
        distance: ``l2`` (non-squared) or ``sqeuclidean``.

    Returns:
        ``(distances, items)`` of the re-scored head, each (Q, min(R, C)), ordered by
        (fine distance, item number).
    """
    if distance not in ("l2", "sqeuclidean"):
        raise ValueError(f"distance must be 'l2' or 'sqeuclidean', got '{distance}'")
    if queries.ndim != 2 or fine.ndim != 2 or queries.shape[1] != fine.shape[1]:
        raise ValueError(
            f"queries (Q, D) and the fine copy (N, D) must agree, got {tuple(queries.shape)} "
            f"and {tuple(fine.shape)}"
        )
    head = candidates[:, : max(0, depth)]
    num_q, width = head.shape
    if width == 0:
        return torch.zeros(num_q, 0), head.clone()
    by_item = head.sort(dim=1).values  # unique items: ties below fall back to the item number
    vectors = fine.index_select(0, by_item.reshape(-1)).float().reshape(num_q, width, fine.shape[1])
    scores = (queries.float().unsqueeze(1) - vectors).pow(2).sum(-1)
    if distance == "l2":
        scores = scores.sqrt()
    order = torch.sort(scores, dim=1, stable=True).indices
    return scores.gather(1, order), by_item.gather(1, order)


def refine_ranking(
    queries: Tensor,
    distances: Tensor,
    candidates: Tensor,
    fine: Tensor,
    depth: int,
    distance: str = "l2",
) -> tuple[Tensor, Tensor]:
    """An ADC ranking with its first ``depth`` places refined (:func:`refine_head`).

    Args:
        distances, candidates: (Q, C) the ADC ranking (distances and item numbers).

    Returns:
        ``(distances, items)``, (Q, C): the refined head (fine distances), then the rest of
        the ADC ranking unchanged (ADC distances).
    """
    head_d, head_i = refine_head(queries, candidates, fine, depth, distance)
    width = head_i.shape[1]
    return (
        torch.cat([head_d, distances[:, width:].float()], dim=1),
        torch.cat([head_i, candidates[:, width:]], dim=1),
    )
