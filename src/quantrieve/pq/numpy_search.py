"""Exact ADC search with numpy alone: the query path of a process without torch.

A service that embeds queries with onnxruntime (``quantrieve serve --onnx``) needs neither torch
nor its 1 GB: this module ranks by the rules of :mod:`quantrieve.pq.adc` and
:mod:`quantrieve.pq.refine`, in numpy:

- look-up tables T (Q, M, K) as :func:`~quantrieve.pq.adc.lookup_tables` computes them
  (``l2``: per-book Euclidean distances, ``sqeuclidean``: squared), in float32;
- an item's distance is the sum of its books' entries, books paired as
  :class:`~quantrieve.pq.adc.GatherADC` pairs them (K * K <= 256) and added in the same order;
- the ranking is ascending by (distance, row); hidden rows (:mod:`quantrieve.pq.hidden`) and
  rows outside a filter are left out;
- refinement re-scores the first R results, and the rest of a tie group straddling place R,
  with the float16 copies, ordered by (fine distance, row).

The float32 arithmetic is that of the torch path, but BLAS may sum a table's dot products in
another order, so two items whose distances differ in the last bits can swap places
(``benchmarks/onnx_serve.py`` measures how often on real codes).
"""

from __future__ import annotations

import numpy as np

from quantrieve.pq.settings import DISTANCES, REFINE_BLOCK_VALUES, TIE_SPAN

#: Distances held at once per chunk of queries (float32 values).
CHUNK_BUDGET = 2**24


def lookup_tables_np(
    queries: np.ndarray, codebooks: np.ndarray, distance: str = "l2"
) -> np.ndarray:
    """float32 (Q, M, K): the distance of each query's sub-vector m to each codeword of book m.

    Args:
        queries: (Q, M*d) embeddings.
        codebooks: (M, K, d).
        distance: ``l2`` or ``sqeuclidean``.
    """
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    num_books, _, dim = codebooks.shape
    queries = np.asarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != num_books * dim:
        raise ValueError(
            f"queries must be (Q, {num_books * dim}) for codebooks {codebooks.shape}, "
            f"got {queries.shape}"
        )
    parts = queries.reshape(len(queries), num_books, dim).transpose(1, 0, 2)  # (M, Q, d)
    books = np.asarray(codebooks, dtype=np.float32)
    sq = (
        (parts * parts).sum(-1, keepdims=True)
        - 2 * np.matmul(parts, books.transpose(0, 2, 1))
        + (books * books).sum(-1)[:, None, :]
    )
    np.maximum(sq, 0, out=sq)
    table = np.sqrt(sq) if distance == "l2" else sq
    return np.ascontiguousarray(table.transpose(1, 0, 2), dtype=np.float32)


class NumpyADC:
    """The per-codes state of numpy ADC: one key column per pair of books (and per unpaired
    book), as :class:`~quantrieve.pq.adc.GatherADC` keeps it.

    Args:
        codes: uint8 (N, M).
        num_codewords: K.
    """

    def __init__(self, codes: np.ndarray, num_codewords: int) -> None:
        codes = np.asarray(codes, dtype=np.uint8)
        self.num_items, self.num_books = codes.shape
        self.num_codewords = num_codewords
        paired = num_codewords * num_codewords <= 256 and self.num_books >= 2
        self.pairs = self.num_books // 2 if paired else 0
        keys = [
            codes[:, m].astype(np.int64) * num_codewords + codes[:, m + 1]
            for m in range(0, 2 * self.pairs, 2)
        ]
        keys += [codes[:, m].astype(np.int64) for m in range(2 * self.pairs, self.num_books)]
        self.keys = [k.astype(np.uint8 if num_codewords <= 16 else np.int64) for k in keys]

    def _tables(self, tables: np.ndarray) -> list[np.ndarray]:
        k, pairs = self.num_codewords, self.pairs
        out: list[np.ndarray] = []
        if pairs:
            summed = tables[:, 0 : 2 * pairs : 2, :, None] + tables[:, 1 : 2 * pairs : 2, None, :]
            out = [summed[:, p].reshape(len(tables), k * k) for p in range(pairs)]
        return out + [tables[:, m, :] for m in range(2 * pairs, self.num_books)]

    def distances(self, tables: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """float32 (Q, N), or (Q, len(rows)) for these rows only, from tables (Q, M, K)."""
        parts = self._tables(np.asarray(tables, dtype=np.float32))
        keys = self.keys if rows is None else [column[rows] for column in self.keys]
        dist = np.take(parts[0], keys[0], axis=1)
        for part, column in zip(parts[1:], keys[1:], strict=True):
            dist += np.take(part, column, axis=1)
        return dist


def topk_rows(dist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k smallest of each row of ``dist`` (Q, C), ascending, ties by column: (distances,
    columns), each (Q, min(k, C)); infinite distances are never returned."""
    num_q, width = dist.shape
    finite = np.isfinite(dist).sum(1)
    k = int(min(k, width, finite.min() if num_q else width))
    out_d = np.zeros((num_q, k), dtype=np.float32)
    out_i = np.zeros((num_q, k), dtype=np.int64)
    if k == 0:
        return out_d, out_i
    kth = np.partition(dist, k - 1, axis=1)[:, k - 1]
    for q in range(num_q):
        cand = np.flatnonzero(dist[q] <= kth[q])
        order = np.lexsort((cand, dist[q, cand]))[:k]
        out_i[q] = cand[order]
        out_d[q] = dist[q, cand[order]]
    return out_d, out_i


def refine_ranking_np(
    queries: np.ndarray,
    distances: np.ndarray,
    candidates: np.ndarray,
    fine: np.ndarray,
    depth: int,
    distance: str,
    expand: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """An ADC ranking (Q, C) with its tie-completed head re-scored by the finer copy, and by
    the expanded queries when ``expand`` > 0: as :func:`~quantrieve.pq.refine.refine_ranking`,
    float32 distances."""
    if expand < 0:
        raise ValueError(f"expand must be >= 0 (0 = off), got {expand}")
    queries = np.asarray(queries, dtype=np.float32)
    if queries.ndim != 2 or fine.ndim != 2 or queries.shape[1] != fine.shape[1]:
        raise ValueError(
            f"queries (Q, D) and the fine copy (N, D) must agree, got {queries.shape} "
            f"and {fine.shape}"
        )
    num_q, width = candidates.shape
    depth = min(depth, width)
    adc = np.asarray(distances, dtype=np.float32)
    if depth <= 0 or num_q == 0:
        return adc, candidates
    span = adc[:, : min(width, TIE_SPAN * depth)]
    in_head = (span <= span[:, depth - 1 : depth]) & np.isfinite(span)
    head = int(in_head.sum(1).max())
    if head == 0:  # no row has a finite distance at place R: nothing to re-score
        return adc, candidates
    items, in_head, adc_head = candidates[:, :head], in_head[:, :head], adc[:, :head]
    key = np.where(in_head, items, int(candidates.max()) + 1 + np.arange(head))
    first = np.argsort(key, axis=1, kind="stable")
    items, in_head, adc_head = (np.take_along_axis(t, first, 1) for t in (items, in_head, adc_head))
    scores = _head_scores_np(queries, fine, items, distance)
    order = np.argsort(np.where(in_head, scores, np.inf), axis=1, kind="stable")
    if expand:
        leaders = np.take_along_axis(items, order, 1)[:, :expand]
        valid = np.take_along_axis(in_head, order, 1)[:, :expand]
        expanded = _expand_queries_np(queries, fine, leaders, valid)
        scores = _head_scores_np(expanded, fine, items, distance)
        order = np.argsort(np.where(in_head, scores, np.inf), axis=1, kind="stable")
    head_d = np.take_along_axis(np.where(in_head, scores, adc_head), order, 1)
    return (
        np.concatenate([head_d, adc[:, head:]], axis=1),
        np.concatenate([np.take_along_axis(items, order, 1), candidates[:, head:]], axis=1),
    )


def _expand_queries_np(
    queries: np.ndarray, fine: np.ndarray, items: np.ndarray, valid: np.ndarray
) -> np.ndarray:
    """(Q, D) float32 expanded queries, as :func:`~quantrieve.pq.refine.expand_queries`, in
    blocks of queries (bounded memory)."""
    num_q, count = items.shape
    block = max(1, REFINE_BLOCK_VALUES // max(1, count * fine.shape[1]))
    out = np.empty_like(queries, dtype=np.float32)
    for start in range(0, num_q, block):
        rows = items[start : start + block]
        vectors = np.asarray(fine[rows.reshape(-1)], np.float32).reshape(*rows.shape, -1)
        weights = valid[start : start + block].astype(np.float32)[..., None]
        summed = queries[start : start + block] + (vectors * weights).sum(1)
        out[start : start + block] = summed / (1 + weights.sum(1))
    return out


def _head_scores_np(
    queries: np.ndarray, fine: np.ndarray, items: np.ndarray, distance: str
) -> np.ndarray:
    """(Q, H) float32 distances of each query to the finer copies of its H head items, in
    blocks of at most :data:`REFINE_BLOCK_VALUES` gathered values."""
    num_q, head = items.shape
    block = max(1, REFINE_BLOCK_VALUES // (head * fine.shape[1]))
    scores = np.empty((num_q, head), dtype=np.float32)
    for start in range(0, num_q, block):
        rows = items[start : start + block]
        vectors = np.asarray(fine[rows.reshape(-1)], dtype=np.float32).reshape(*rows.shape, -1)
        diff = queries[start : start + block, None, :] - vectors
        scores[start : start + block] = (diff * diff).sum(-1)
    return np.sqrt(scores) if distance == "l2" else scores
