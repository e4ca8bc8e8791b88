"""Retrieval quality: mAP@K, precision@N and a precision-recall curve, in one chunked pass.

Definitions (docs/method.md, protocol):

- Relevance: a database item is relevant to a query when they share at least one label
  (single-label data is the special case of one-hot labels).
- Ranking: ascending distance; ties are broken by a fixed pseudo-random order of the database
  (:func:`tie_order`), not by database index: an image folder is read class by class, and
  ties broken by index would rank the items of a tie group (items sharing a code) class by
  class, which flatters coarse codes. A search ranks ties by index; an evaluation scores what
  a ranking is worth whatever the order the database was added in.
- AP@K = (1/R_K) * sum_{j<=K} rel_j * P@j, where R_K is the number of relevant items in the top
  K (the literature's normaliser); a query with no relevant item in its top K scores 0 and still
  counts. mAP@K is the mean over all queries.
- precision@N: the fraction of relevant items in the top N, averaged over queries.
- PR curve (P-R by ranking, with interpolated precision): for each query, precision P(j) and
  recall r(j) = hits(j) / R of its top j, at every rank cut-off j = 1..N of its full ranking (R:
  the query's number of relevant items in the whole database). At each recall level
  r_l = l / (levels - 1), l = 0..levels-1 (0, 0.05, ..., 1 by default), the query's interpolated
  precision is max{P(j) : r(j) >= r_l}; the curve is its mean over queries. Queries are compared
  only through their own rankings, never through distance values, so continuous queries whose
  distances live on different scales are fine. A query with no relevant item has no recall and
  is left out of the curve (``extra["pr_queries_without_relevant"]`` counts them;
  ``extra["pr_queries"]`` is the number averaged). The curve depends on every query's full
  ranking (computed exactly in a few passes over its N distances, see :func:`_best_precision`), so
  by default it is estimated on ``pr_queries`` evenly spaced queries (all queries when there
  are fewer, or when ``pr_queries`` is 0); mAP and precision@N always use every query.

The distance matrix is computed chunk by chunk over queries, with the full database per chunk;
memory stays bounded by the chunk budget. mAP and precision@N run without a Python loop per
query; the PR curve runs one loop iteration (a few vectorised passes) per curve query.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor

from quantrieve.pq import query_chunks, topk_smallest
from quantrieve.runtime.progress import Progress, report

#: Seed of the evaluation's tie order (:func:`tie_order`).
TIE_ORDER_SEED = 0


def tie_order(num_items: int, seed: int = TIE_ORDER_SEED) -> Tensor:
    """The order in which an evaluation ranks items at equal distance: a permutation of the
    database rows, fixed for a database size, independent of the labels (module docstring)."""
    return torch.from_numpy(np.random.default_rng(seed).permutation(num_items))


def relevance_matrix(query_labels: Tensor, db_labels: Tensor) -> Tensor:
    """(Q, N) boolean: query and item share at least one label (multi-hot inputs)."""
    return (query_labels.float() @ db_labels.float().T) > 0


def _label_relevance(
    query_labels: Tensor, db_labels: Tensor
) -> Callable[[Tensor, Tensor | None], Tensor]:
    """``relevance(queries, items)``: relevance (q, n) of the given query rows to the given
    database items per query ((q, n) indices), or to the whole database when ``items`` is None.
    Integer comparison of classes when every row is one-hot."""
    single = bool((query_labels.sum(1) == 1).all() and (db_labels.sum(1) == 1).all())
    if single:
        q_class, db_class = query_labels.float().argmax(1), db_labels.float().argmax(1)

        def by_class(queries: Tensor, items: Tensor | None) -> Tensor:
            theirs = db_class[None, :] if items is None else db_class[items]
            return q_class[queries, None] == theirs

        return by_class
    q_float, db_float = query_labels.float(), db_labels.float()
    db_t = db_float.T.contiguous()

    def shared_label(queries: Tensor, items: Tensor | None) -> Tensor:
        if items is None:
            return (q_float[queries] @ db_t) > 0
        return torch.bmm(db_float[items], q_float[queries, :, None]).squeeze(2) > 0

    return shared_label


def average_precision_at_k(relevant: Tensor) -> Tensor:
    """AP@K per query from the relevance of its ranked top K: (Q, K) bool -> (Q,) float.

    AP = sum_j rel_j * P@j / R_K with R_K = sum_j rel_j; 0 when R_K = 0.
    """
    rel = relevant.float()
    ranks = torch.arange(1, rel.shape[1] + 1, device=rel.device, dtype=torch.float32)
    precision_at_j = rel.cumsum(1) / ranks
    hits = rel.sum(1)
    return torch.where(hits > 0, (rel * precision_at_j).sum(1) / hits.clamp_min(1), 0.0)


#: ``RetrievalResult.pr_method`` of the curve computed here (see the module docstring). Results
#: saved before it have ``""``: their curve used distance thresholds shared by all queries and is
#: not comparable.
PR_METHOD = "rank-interpolated"

#: Default number of evenly spaced queries the PR curve is estimated on.
PR_QUERIES = 2000


@dataclass
class RetrievalResult:
    """Every number of one evaluation (see the module docstring for the definitions).

    ``pr_recall`` holds the recall levels and ``pr_precision`` the mean interpolated precision
    at each; ``pr_method`` names how they were computed (:data:`PR_METHOD`, or ``""`` for a
    result saved by an older version, whose curve used shared distance thresholds).
    """

    map_at_k: float
    k: int
    precision_at: dict[int, float]
    pr_precision: list[float]
    pr_recall: list[float]
    num_queries: int
    num_database: int
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)
    pr_method: str = ""

    def to_dict(self) -> dict:
        out = asdict(self)
        out["precision_at"] = {str(n): v for n, v in self.precision_at.items()}
        return out


def evaluate_retrieval(
    distances: Callable[[slice], Tensor],
    query_labels: Tensor,
    db_labels: Tensor,
    k: int = 1000,
    precision_at: tuple[int, ...] | list[int] = (10, 100, 1000),
    pr_levels: int = 21,
    pr_queries: int = PR_QUERIES,
    chunk_budget: int = 2**24,
    progress: Progress | None = None,
    rerank: Callable[[slice, Tensor, Tensor], Tensor] | None = None,
    rerank_width: int = 0,
    ties: Tensor | None = None,
) -> RetrievalResult:
    """Rank the database for every query and score the rankings.

    Args:
        distances: Maps a slice of query indices to their (q, N) non-negative distances to the
            whole database (e.g. ADC on PQ codes, or exact L2). Each result is consumed
            before the next call, so the function may reuse one buffer.
        query_labels: (Q, C) multi-hot labels of the queries.
        db_labels: (N, C) multi-hot labels of the database.
        k: K of mAP@K.
        precision_at: cut-offs N of precision@N.
        pr_levels: number of recall levels of the PR curve, evenly spaced from 0 to 1 (>= 2).
        pr_queries: evenly spaced queries the PR curve is estimated on (0 = all). Queries
            among them with no relevant item are left out of the curve and counted in
            ``extra["pr_queries_without_relevant"]``.
        chunk_budget: about how many (query, item) distances are held at once.
        progress: ``progress(queries_done, num_queries)`` after every chunk.
        rerank: re-orders the head of each ranking: maps a slice of queries and their
            ranking, (q, w) distances and database indices, to the re-ordered (q, w) indices
            (e.g. an index's refinement, :func:`quantrieve.pq.refine_ranking`). mAP@K and
            precision@N score the re-ordered ranking; the PR curve, which ranks the whole
            database, stays on ``distances``.
        rerank_width: the w given to ``rerank`` when it needs a ranking wider than the
            deepest cut-off (the head of a refinement takes in tie groups, up to 4 R).
        ties: the order in which items at equal distance are ranked, a permutation of the
            database rows (default: :func:`tie_order`; ``torch.arange(N)``: by row).
    """
    start = time.perf_counter()
    num_q, num_db = len(query_labels), len(db_labels)
    if num_q == 0 or num_db == 0:
        raise ValueError("evaluation needs at least one query and one database item")
    if k < 1 or any(n < 1 for n in precision_at):
        raise ValueError(f"K and the precision cut-offs must be >= 1, got {k}, {precision_at}")
    if pr_levels < 2 or pr_queries < 0:
        raise ValueError(
            f"pr_levels must be >= 2 and pr_queries >= 0, got {pr_levels}, {pr_queries}"
        )
    if query_labels.shape[1] != db_labels.shape[1]:
        raise ValueError(
            f"query labels have {query_labels.shape[1]} classes, database labels "
            f"{db_labels.shape[1]}"
        )
    depth = min(max([k, *precision_at]), num_db)
    ap_sum = 0.0
    prec_sum = dict.fromkeys(precision_at, 0.0)
    steps = pr_levels - 1
    pr_sum = torch.zeros(pr_levels, dtype=torch.float64)
    pr_used = pr_empty = 0
    relevance = _label_relevance(query_labels, db_labels)
    stride = max(1, -(-num_q // pr_queries)) if pr_queries else 1
    # The PR curve's temporaries take ~20 bytes per distance: a quarter of the chunk budget at
    # a time keeps them near the chunk's own footprint, and one row per thread at least keeps
    # every thread busy when rows hold millions of items.
    pr_rows = max(torch.get_num_threads(), chunk_budget // 4 // num_db)
    order = tie_order(num_db) if ties is None else torch.as_tensor(ties, dtype=torch.int64)
    if order.shape != (num_db,) or not bool(torch.bincount(order, minlength=num_db).eq(1).all()):
        raise ValueError(f"ties must be a permutation of the {num_db} database rows")
    rank = torch.empty_like(order)
    rank[order] = torch.arange(num_db)
    width = min(max(depth, rerank_width if rerank is not None else 0), num_db)
    for chunk in query_chunks(num_q, num_db, chunk_budget):
        dist = distances(chunk).float()
        if dist.shape != (chunk.stop - chunk.start, num_db):
            raise ValueError(f"distance function returned {tuple(dist.shape)} for {chunk}")
        queries = torch.arange(chunk.start, chunk.stop)
        ranked_d, idx = topk_smallest(dist, width, rank)  # ties by rank in the tie order
        idx = order[idx]
        if rerank is not None:
            idx = rerank(chunk, ranked_d, idx)
        idx = idx[:, :depth]
        rel = relevance(queries, idx)
        ap_sum += average_precision_at_k(rel[:, :k]).sum().item()
        for n in precision_at:
            prec_sum[n] += rel[:, :n].float().mean(1).sum().item()
        rows = queries[queries % stride == 0] - chunk.start
        for part in rows.split(pr_rows):
            # Columns in tie order: the curve's ties by column are then ties by that order.
            relevant = relevance(part + chunk.start, None).index_select(1, order)
            interp = interpolated_precision(dist[part].index_select(1, order), relevant, steps)
            pr_sum += interp.sum(0)
            pr_used += len(interp)
            pr_empty += len(part) - len(interp)
        report(progress, chunk.stop, num_q)
    return RetrievalResult(
        map_at_k=ap_sum / num_q,
        k=k,
        precision_at={n: prec_sum[n] / num_q for n in precision_at},
        pr_precision=(pr_sum / max(1, pr_used)).tolist() if pr_used else [],
        pr_recall=[level / steps for level in range(pr_levels)] if pr_used else [],
        num_queries=num_q,
        num_database=num_db,
        seconds=time.perf_counter() - start,
        extra={
            "pr_queries": pr_used,
            "pr_queries_without_relevant": pr_empty,
            # How ties were ranked: the fixed pseudo-random order, or the caller's.
            "ties": f"tie_order(seed={TIE_ORDER_SEED})" if ties is None else "given",
        },
        pr_method=PR_METHOD,
    )


def interpolated_precision(dist: Tensor, relevant: Tensor, steps: int) -> Tensor:
    """Per query, interpolated precision at recall levels l / steps, l = 0..steps.

    Each row is ranked by ascending distance, ties by column (as everywhere in this module).
    With R the row's number of relevant items, the i-th relevant item found at rank p_i gives
    the cut-off (recall i / R, precision i / p_i); precision between two relevant items only
    falls, so these cut-offs hold every maximum. The interpolated precision at level r is
    max{i / p_i : i / R >= r}. Rows without a relevant item have no recall and are dropped.
    Computed by :func:`_best_precision`, exactly, without ranking whole rows; blocks of rows
    run on torch's thread count.

    Args:
        dist: (q, N) non-negative distances.
        relevant: (q, N) bool.
        steps: number of recall intervals (``steps + 1`` levels).

    Returns:
        (q', steps + 1) float64, one row per query with at least one relevant item, in order.
    """
    dist, relevant = dist.cpu().float(), relevant.cpu()
    keep = relevant.any(1)
    if not bool(keep.all()):
        dist, relevant = dist[keep], relevant[keep]
    if len(dist) == 0:
        return torch.zeros(0, steps + 1, dtype=torch.float64)
    values = torch.where(dist > 0, dist, 0.0).numpy()  # -0.0 and NaN become 0.0
    rel = relevant.numpy()
    best = np.zeros((len(values), steps + 1), dtype=np.float32)

    def run(rows: slice) -> None:
        best[rows] = _best_precision(values[rows], rel[rows], steps)

    threads = max(1, min(torch.get_num_threads(), len(values)))
    bounds = np.linspace(0, len(values), threads + 1).astype(int)
    blocks = [slice(a, b) for a, b in itertools.pairwise(bounds)]
    if len(blocks) == 1:
        run(blocks[0])
    else:
        with ThreadPoolExecutor(len(blocks)) as pool:
            list(pool.map(run, blocks))
    # max over the items of every level >= l: a running max from the highest level down
    return torch.from_numpy(best).double().flip(1).cummax(1).values.flip(1)


#: Average items per distance bucket in :func:`_best_precision` (and at most ``_MAX_BUCKETS``).
_BUCKET_ITEMS = 16
_MAX_BUCKETS = 2**17
#: Relative margin of the bound test in :func:`_best_precision` (float64 error is ~1e-16).
_MARGIN = 1e-9


def _best_precision(values: np.ndarray, relevant: np.ndarray, steps: int) -> np.ndarray:
    """Per row, the best precision i / p_i at each level floor(i * steps / R), exact, float32.

    ``values``: (q, N) non-negative distances (+inf allowed); ``relevant``: (q, N), at least one
    per row. Ranking whole rows costs a sort of N items each, out of cache at millions of
    items. Instead, per row:

    1. Items go into about N / ``_BUCKET_ITEMS`` buckets, linear in distance (monotone, so equal
       distances share a bucket and buckets follow the ranking). Bucket b holds n_b items, r_b
       of them relevant, after A_b items and I_b relevant ones of earlier buckets.
    2. The j-th relevant item of bucket b is the i-th of the row (i = I_b + j), and its rank
       lies in [A_b + j, A_b + n_b - r_b + j]: precision between lo_i = i / (A_b + n_b - r_b + j)
       and up_i = i / (A_b + j). Let LB_l be the largest lo_i of level l.
    3. Only buckets holding an item with up_i >= LB_l (less a margin for rounding) are ranked,
       exactly, by (distance, column). An item of any other bucket has precision below LB_l,
       itself at most the precision of the item that gave it (whose bucket is ranked), so it is
       never a level's maximum: the maximum over the ranked items is the exact answer.

    Every step is a pass over the (q, N) block, a bincount into a cache-sized histogram, or
    work on the relevant or the ranked items alone, so the cost per item does not grow with N.
    The ranked buckets hold a few percent of the items (``benchmarks/pr_ranking.py``).
    Precision is i / p_i in float32, as a full ranking computes it.
    """
    q, n = values.shape
    total = np.count_nonzero(relevant, axis=1)
    buckets = max(1, min(n // _BUCKET_ITEMS, _MAX_BUCKETS))
    low = values.min(1)
    high = values.max(1)
    with np.errstate(invalid="ignore"):  # a row of nothing but +inf: NaN, sent to the end
        if not np.isfinite(high).all():
            high = np.where(np.isfinite(values), values, low[:, None]).max(1)
        span = (high - low).astype(np.float64)
        scale = np.divide(buckets - 1, span, out=np.zeros(q), where=span > 0)
        # (v - low) * scale is monotone in v; +inf lands in the last bucket.
        scaled = np.subtract(values, low[:, None], dtype=np.float32)
        np.multiply(scaled, scale.astype(np.float32)[:, None], out=scaled)
        np.fmin(scaled, np.float32(buckets - 1), out=scaled)
    bucket = scaled.astype(np.intp)  # bincount's own index type: no conversion copy
    bucket += (np.arange(q, dtype=np.intp) * buckets)[:, None]  # one histogram for the block
    count = np.bincount(bucket.ravel(), minlength=q * buckets)
    hits = np.bincount(bucket[relevant], minlength=q * buckets)
    before = _exclusive_cumsum(count, q)
    found_before = _exclusive_cumsum(hits, q)
    # Every relevant item, row by row in ranked order: its bucket, row, i, j and level.
    of = np.repeat(np.arange(q * buckets), hits)
    row = of // buckets
    i = np.arange(1, len(of) + 1) - (np.cumsum(total) - total)[row]
    j = i - found_before[of]
    cell = row * (steps + 1) + i * steps // total[row]  # non-decreasing
    lower = i / (before[of] + count[of] - hits[of] + j)
    upper = i / (before[of] + j)
    floor = _max_per_cell(lower, cell, q * (steps + 1))
    ranked = np.zeros(q * buckets, dtype=bool)
    ranked[of[upper >= floor[cell] * (1 - _MARGIN)]] = True
    # The items of the ranked buckets, sorted by (row, distance), ties in column order.
    chosen = np.flatnonzero(ranked[bucket])
    keys = (chosen // n) << 32 | values.view(np.uint32).ravel()[chosen]
    position = np.flatnonzero(relevant.ravel()[chosen[_sort_chosen(keys)]])
    which = np.flatnonzero(ranked)  # in the same order: by row, then by distance
    offset = np.cumsum(count[which]) - count[which]
    found_offset = np.cumsum(hits[which]) - hits[which]
    slot = np.repeat(np.arange(len(which)), hits[which])
    of = which[slot]
    row = of // buckets
    i = found_before[of] + np.arange(1, len(position) + 1) - found_offset[slot]
    rank = before[of] + position - offset[slot] + 1
    precision = i.astype(np.float32) / rank.astype(np.float32)
    cell = row * (steps + 1) + i * steps // total[row]
    return _max_per_cell(precision, cell, q * (steps + 1)).reshape(q, steps + 1)


def _max_per_cell(values: np.ndarray, cell: np.ndarray, size: int) -> np.ndarray:
    """Maximum of ``values`` per cell (a non-decreasing cell index per value), 0 elsewhere."""
    out = np.zeros(size, dtype=values.dtype)
    if len(values):
        starts = np.flatnonzero(np.diff(cell, prepend=-1))
        out[cell[starts]] = np.maximum.reduceat(values, starts)
    return out


def _exclusive_cumsum(counts: np.ndarray, rows: int) -> np.ndarray:
    """Per row of ``counts`` (flat, ``rows`` equal rows), the sum of the entries before each."""
    table = counts.reshape(rows, -1)
    return (np.cumsum(table, axis=1) - table).ravel()


def _sort_chosen(keys: np.ndarray) -> np.ndarray:
    """Stable order of (row << 32 | distance bits) keys: ties keep their column order."""
    return np.argsort(keys, kind="stable")
