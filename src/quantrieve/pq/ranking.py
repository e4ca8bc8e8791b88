"""Exact top-k with a deterministic tie order, and query chunking for bounded memory.

Rankings are ascending by distance with ties broken by column (database) index, lower first:
the tie order every evaluator and search path in quantrieve shares.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor


def _topk_by_keys(dist: Tensor, k: int) -> Tensor:
    """Exact (distance, index) order: a non-negative float32's bit pattern orders like its
    value, so ``(bits << 32) | column`` is a unique int64 key ordered by (distance, index)."""
    bits = dist.view(torch.int32).to(torch.int64)
    cols = torch.arange(dist.shape[1], device=dist.device, dtype=torch.int64)
    top = ((bits << 32) | cols).topk(k, dim=1, largest=False, sorted=True).values
    return top & 0xFFFFFFFF


def topk_smallest(distances: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k smallest distances per row, ascending, ties broken by column index.

    Distances must be non-negative. A float ``topk`` of k + 1 selects candidates; inside the
    selection equal distances are reordered by index, and the rows where a tie straddles the
    k-th place (the (k+1)-th distance equals the k-th) are redone with exact int64 keys.
    """
    num = distances.shape[1]
    k = min(k, num)
    # One copy of the matrix; +0.0 turns -0.0 into 0.0.
    dist = torch.clamp_min(distances.float(), 0.0).add_(0.0)
    # k + 1 candidates, unordered; one extra tells whether a tie straddles the k-th place.
    _, cand = dist.topk(min(k + 1, num), dim=1, largest=False, sorted=False)
    # Order the candidates by (distance, index) in one sort of int64 keys: a non-negative
    # float32's bit pattern orders like its value (see _topk_by_keys).
    keys = (dist.gather(1, cand).view(torch.int32).to(torch.int64) << 32) | cand
    keys = keys.sort(dim=1).values
    cand = keys & 0xFFFFFFFF
    vals = (keys >> 32).to(torch.int32).view(torch.float32)
    straddles = (
        vals[:, k] == vals[:, k - 1] if k < num else torch.zeros_like(vals[:, 0], dtype=torch.bool)
    )
    indices, values = cand[:, :k].contiguous(), vals[:, :k].contiguous()
    if straddles.any():
        rows = straddles.nonzero().squeeze(1)
        indices[rows] = _topk_by_keys(dist[rows], k)
        values[rows] = dist[rows].gather(1, indices[rows])
    return values, indices


def query_chunks(num_queries: int, num_items: int, budget: int = 2**24) -> Iterator[slice]:
    """Slices of queries such that a (chunk, num_items) matrix holds about ``budget`` values."""
    size = max(1, min(num_queries, budget // max(1, num_items)))
    for start in range(0, num_queries, size):
        yield slice(start, min(start + size, num_queries))
