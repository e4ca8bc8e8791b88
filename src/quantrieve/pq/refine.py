"""Refinement: the head of an ADC ranking re-scored with a finer copy of each item.

PQ codes of 32 bits tie often: every item that shares a query's best code gets the same ADC
distance, and the top 10 of a ranking is then decided by the items' positions, not by what they
show. An index may keep a finer copy of each item (``float16``, 2 bytes a dimension: the
embedding, or the backbone's representation); a search takes the first R items of the ADC
ranking, computes their distances to the query's own vector from the finer copy, and orders
them by (fine distance, item index). Items after the head keep their ADC order and distances.
The refined distance uses the same metric as the ADC ranking: ``l2`` (not squared) or
``sqeuclidean``. This is the re-ranking stage of faiss's ``IndexRefine`` with R = k_factor * k
fixed as a depth instead.

One difference from a fixed depth: when the R-th result shares its ADC distance with results
after it (one tie group straddles place R, typically items with one code), the head takes in
the rest of that group, up to ``TIE_SPAN * R`` results (:func:`refine_ranking`; the callers
fetch the ADC ranking that wide, :func:`~quantrieve.pq.settings.tie_width`). Which of a tie
group's items are re-scored is then not decided by their positions in the folder, unless the
group is larger than the span (collapsed codes, which ``encode`` warns of).

Query expansion (optional, ``expand`` = n > 0): once the head is ordered, each query is
replaced by the mean of itself and the finer copies of its first n results, and the same head
is re-scored and re-ordered against that mean. This is average query expansion (Chum et al.,
"Total Recall", ICCV 2007), restricted to the head: the neighbours a query's closest results
agree on pull the rest of the head their way, and nothing outside the head moves. The head's
distances are then those to the expanded query.
"""

from __future__ import annotations

import torch
from torch import Tensor

from quantrieve.pq.settings import REFINE_BLOCK_VALUES, TIE_SPAN

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
    expand: int = 0,
) -> tuple[Tensor, Tensor]:
    """An ADC ranking with its head re-scored and re-ordered by the finer copy.

    The head of a row is its first ``depth`` results and every later result at the same ADC
    distance as the R-th (the rest of a tie group straddling place R), at most ``TIE_SPAN *
    depth`` results and only among the given candidates; infinite ADC distances (excluded
    items) are never in it. The head is ordered by (fine distance, item number); the rest of
    the row keeps its ADC order and distances.

    Args:
        queries: (Q, D) the queries' vectors in the space of ``fine``.
        distances, candidates: (Q, C) the ADC ranking (ascending distances, item numbers).
        fine: (N, D) the finer copy of every item (any float dtype).
        depth: R.
        distance: ``l2`` (non-squared) or ``sqeuclidean``.
        expand: n > 0 re-scores the head once more against the mean of each query and the
            finer copies of its first n refined results (average query expansion); 0: off.

    Returns:
        ``(distances, items)``, (Q, C): the refined head (fine distances), then the rest.
    """
    if expand < 0:
        raise ValueError(f"expand must be >= 0 (0 = off), got {expand}")
    if distance not in ("l2", "sqeuclidean"):
        raise ValueError(f"distance must be 'l2' or 'sqeuclidean', got '{distance}'")
    if queries.ndim != 2 or fine.ndim != 2 or queries.shape[1] != fine.shape[1]:
        raise ValueError(
            f"queries (Q, D) and the fine copy (N, D) must agree, got {tuple(queries.shape)} "
            f"and {tuple(fine.shape)}"
        )
    num_q, width = candidates.shape
    depth = min(depth, width)
    adc = distances.float()
    if depth <= 0 or num_q == 0:
        return adc, candidates
    span = adc[:, : min(width, TIE_SPAN * depth)]
    in_head = (span <= span[:, depth - 1 : depth]) & torch.isfinite(span)
    head = int(in_head.sum(1).max())  # in_head is a prefix of each row: ADC is ascending
    if head == 0:  # no row has a finite distance at place R: nothing to re-score
        return adc, candidates
    items, in_head, adc_head = candidates[:, :head], in_head[:, :head], adc[:, :head]
    # The head by item number (fine ties fall back to it), then the rest in ADC order.
    key = torch.where(in_head, items, int(candidates.max()) + 1 + torch.arange(head))
    first = key.argsort(dim=1)
    items, in_head, adc_head = (t.gather(1, first) for t in (items, in_head, adc_head))
    scores = _head_scores(queries, fine, items, distance)
    order = torch.where(in_head, scores, float("inf")).sort(dim=1, stable=True).indices
    if expand:
        first_items = items.gather(1, order)[:, :expand]
        expanded = expand_queries(queries, fine, first_items, in_head.gather(1, order)[:, :expand])
        scores = _head_scores(expanded, fine, items, distance)
        order = torch.where(in_head, scores, float("inf")).sort(dim=1, stable=True).indices
    head_d = torch.where(in_head, scores, adc_head).gather(1, order)
    return (
        torch.cat([head_d, adc[:, head:]], dim=1),
        torch.cat([items.gather(1, order), candidates[:, head:]], dim=1),
    )


def expand_queries(queries: Tensor, fine: Tensor, items: Tensor, valid: Tensor) -> Tensor:
    """Average query expansion (Chum et al., ICCV 2007): each query averaged with the finer
    copies of its given results.

    Args:
        queries: (Q, D) the queries' vectors in the space of ``fine``.
        fine: (N, D) the finer copy of every item.
        items: (Q, n) item numbers, a query's first refined results.
        valid: bool (Q, n), which of them count (a row with fewer results has fewer).

    Returns:
        (Q, D) float32: (q + sum of the valid items' vectors) / (1 + their number).
    """
    num_q, count = items.shape
    block = max(1, REFINE_BLOCK_VALUES // max(1, count * fine.shape[1]))  # bounded memory
    parts = []
    for start in range(0, num_q, block):
        rows = items[start : start + block]
        vectors = fine.index_select(0, rows.reshape(-1)).float().reshape(*rows.shape, -1)
        weights = valid[start : start + block].float().unsqueeze(-1)
        summed = queries[start : start + block].float() + (vectors * weights).sum(1)
        parts.append(summed / (1 + weights.sum(1)))
    return torch.cat(parts) if parts else queries.float()


def _head_scores(queries: Tensor, fine: Tensor, items: Tensor, distance: str) -> Tensor:
    """(Q, H) distances of each query to the finer copies of its H head items, in blocks of
    queries so that at most :data:`REFINE_BLOCK_VALUES` gathered values are held at once."""
    num_q, head = items.shape
    block = max(1, REFINE_BLOCK_VALUES // max(1, head * fine.shape[1]))
    parts = []
    for start in range(0, num_q, block):
        rows = items[start : start + block]
        vectors = fine.index_select(0, rows.reshape(-1)).float().reshape(*rows.shape, -1)
        parts.append((queries[start : start + block].float().unsqueeze(1) - vectors).pow(2).sum(-1))
    scores = torch.cat(parts)
    return scores.sqrt() if distance == "l2" else scores
