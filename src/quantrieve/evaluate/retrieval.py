"""Retrieval quality: mAP@K, precision@N and a precision-recall curve, in one chunked pass.

Definitions (docs/method.md, protocol):

- Relevance: a database item is relevant to a query when they share at least one label
  (single-label data is the special case of one-hot labels).
- Ranking: ascending distance; ties are broken by database index (lower index first).
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
  ``extra["pr_queries"]`` is the number averaged). The curve needs every query's full ranking
  (a sort of its N distances), so by default it is estimated on ``pr_queries`` evenly spaced
  queries (all queries when there are fewer, or when ``pr_queries`` is 0); mAP and precision@N
  always use every query.

The distance matrix is computed chunk by chunk over queries, with the full database per chunk;
memory stays bounded by the chunk budget. No Python loop runs per query.
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
    # The PR curve ranks whole rows (int64 orders plus temporaries, ~30 bytes per distance):
    # a quarter of the chunk budget at a time keeps it within the chunk's own footprint.
    pr_rows = max(1, chunk_budget // 4 // num_db)
    for chunk in query_chunks(num_q, num_db, chunk_budget):
        dist = distances(chunk).float()
        if dist.shape != (chunk.stop - chunk.start, num_db):
            raise ValueError(f"distance function returned {tuple(dist.shape)} for {chunk}")
        queries = torch.arange(chunk.start, chunk.stop)
        _, idx = topk_smallest(dist, depth)
        rel = relevance(queries, idx)
        ap_sum += average_precision_at_k(rel[:, :k]).sum().item()
        for n in precision_at:
            prec_sum[n] += rel[:, :n].float().mean(1).sum().item()
        rows = queries[queries % stride == 0] - chunk.start
        for part in rows.split(pr_rows):
            interp = interpolated_precision(dist[part], relevance(part + chunk.start, None), steps)
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
        extra={"pr_queries": pr_used, "pr_queries_without_relevant": pr_empty},
        pr_method=PR_METHOD,
    )


def interpolated_precision(dist: Tensor, relevant: Tensor, steps: int) -> Tensor:
    """Per query, interpolated precision at recall levels l / steps, l = 0..steps.

    Each row is ranked by ascending distance, ties by column (as everywhere in this module).
    With R the row's number of relevant items, the i-th relevant item found at rank p_i gives
    the cut-off (recall i / R, precision i / p_i); precision between two relevant items only
    falls, so these cut-offs hold every maximum. The interpolated precision at level r is
    max{i / p_i : i / R >= r}. Rows without a relevant item have no recall and are dropped.

    Args:
        dist: (q, N) non-negative distances.
        relevant: (q, N) bool.
        steps: number of recall intervals (``steps + 1`` levels).

    Returns:
        (q', steps + 1) float64, one row per query with at least one relevant item, in order.
    """
    dist, relevant = dist.cpu().float(), relevant.cpu()
    total = relevant.sum(1)
    if not bool((total > 0).all()):
        keep = total > 0
        dist, relevant, total = dist[keep], relevant[keep], total[keep]
    q = len(dist)
    if q == 0:
        return torch.zeros(0, steps + 1, dtype=torch.float64)
    bits = torch.where(dist > 0, dist, 0.0).numpy().view(np.uint32)  # -0.0 becomes 0.0
    ranked = _ranked_relevance(bits, relevant.numpy())
    row, col = ranked.nonzero(as_tuple=True)  # relevant, ranked
    first = total.cumsum(0) - total
    # i: the relevant items up to this one, in its row
    found = torch.arange(1, len(row) + 1).sub_(first.index_select(0, row))
    precision = found.float().div_(col.add_(1).float())  # i / p_i
    # The item counts at level l when i / R >= l / steps, i.e. when l <= floor(i * steps / R)
    # (non-negative integers: truncation is the floor).
    level = found.mul_(steps).div_(total.index_select(0, row), rounding_mode="trunc")
    cell = level.add_(row.mul_(steps + 1))
    best = torch.zeros(q * (steps + 1)).scatter_reduce_(0, cell, precision, "amax")
    # max over the items of every level >= l: a running max from the highest level down
    return best.view(q, steps + 1).double().flip(1).cummax(1).values.flip(1)


#: Rows wider than this are ranked in buckets of about ``_BUCKET`` items (see _ranked_relevance).
_WIDE = 2**18
_BUCKET = 2**16


def _ranked_relevance(bits: np.ndarray, relevant: np.ndarray) -> Tensor:
    """Each row's relevance in ranked order: ascending distance, ties by column.

    ``bits`` are the uint32 bit patterns of non-negative float32 distances, which order like
    the values. Two stable passes of numpy's stable sort, a radix sort for 16-bit integers
    (low half first, then high half), order the columns by (distance, column) exactly, in
    linear time per row, about 1.8x faster than one sort of int64 (distance, column) keys.
    Rows wider than ``_WIDE`` are first split, stably, into buckets of whole high halves (about
    ``_BUCKET`` items each, in ascending order), and each bucket is ranked in cache: 2.1x faster
    at 600,000 items and 1.4x at 6 million (``benchmarks/pr_ranking.py``). Blocks of rows
    run on torch's thread count (numpy's sort releases the GIL).
    """
    out = torch.empty(relevant.shape, dtype=torch.bool)

    def rank_block(block: slice) -> None:
        if bits.shape[1] <= _WIDE:
            out[block] = _radix_rank(bits[block], relevant[block])
            return
        for row in range(block.start, block.stop):
            out[row] = torch.from_numpy(_bucketed_rank(bits[row], relevant[row]))

    bounds = np.linspace(0, len(bits), max(1, min(torch.get_num_threads(), len(bits))) + 1)
    blocks = [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]
    if len(blocks) == 1:
        rank_block(blocks[0])
    else:
        with ThreadPoolExecutor(len(blocks)) as pool:
            list(pool.map(rank_block, blocks))
    return out


def _radix_rank(bits: np.ndarray, relevant: np.ndarray) -> Tensor:
    """Relevance (rows, n) reordered by (distance, column): two stable 16-bit radix passes."""
    low = (bits & 0xFFFF).astype(np.uint16)
    order = torch.from_numpy(np.argsort(low, axis=1, kind="stable"))
    high = torch.from_numpy((bits >> 16).astype(np.uint16).view(np.int16))
    high = torch.gather(high, 1, order).numpy().view(np.uint16)
    rel = torch.gather(torch.from_numpy(relevant), 1, order)
    return torch.gather(rel, 1, torch.from_numpy(np.argsort(high, axis=1, kind="stable")))


def _bucketed_rank(bits: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """One wide row's relevance in (distance, column) order, ranked bucket by bucket.

    Items are assigned to buckets by the high 16 bits of their distance (equal distances share
    a bucket; buckets follow each other in ascending distance), moved bucket by bucket with a
    stable sort (so a bucket keeps its items in column order), and each bucket is ranked by
    :func:`_radix_rank`, which keeps ties in that order.
    """
    high = (bits >> 16).astype(np.uint16)
    counts = np.bincount(high, minlength=2**16)
    bucket_of = (np.cumsum(counts) - counts) // _BUCKET  # non-decreasing in the high bits
    dtype = np.uint8 if bucket_of[-1] < 2**8 else np.uint16
    bucket = bucket_of.astype(dtype)[high]
    order = np.argsort(bucket, kind="stable")
    sizes = np.bincount(bucket, minlength=int(bucket_of[-1]) + 1)
    moved_bits, moved_rel = bits[order], relevant[order]
    out = np.empty_like(relevant)
    start = 0
    for size in sizes[sizes > 0]:
        part = slice(start, start + int(size))
        out[part] = _radix_rank(moved_bits[None, part], moved_rel[None, part]).numpy()[0]
        start += int(size)
    return out
