"""Retrieval quality: mAP@K, precision@N and a precision-recall curve, in one chunked pass.

Definitions (docs/method.md, protocol):

- Relevance: a database item is relevant to a query when they share at least one label
  (single-label data is the special case of one-hot labels).
- Ranking: ascending distance; ties are broken by database index (lower index first).
- AP@K = (1/R_K) * sum_{j<=K} rel_j * P@j, where R_K is the number of relevant items in the top
  K (the literature's normaliser); a query with no relevant item in its top K scores 0 and still
  counts. mAP@K is the mean over all queries.
- precision@N: the fraction of relevant items in the top N, averaged over queries.
- PR curve: precision and recall of the set {items with distance <= t}, averaged over queries,
  for a grid of distance thresholds t (quantiles of the first chunk's distances). It needs every
  query's full distance histogram, so by default it is estimated on ``pr_queries`` evenly
  spaced queries (all queries when there are fewer, or when ``pr_queries`` is 0); mAP and
  precision@N always use every query.

The distance matrix is computed chunk by chunk over queries, with the full database per chunk;
memory stays bounded by the chunk budget. No Python loop runs per query.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor

from quantrieve.pq import query_chunks, topk_smallest


def relevance_matrix(query_labels: Tensor, db_labels: Tensor) -> Tensor:
    """(Q, N) boolean: query and item share at least one label (multi-hot inputs)."""
    return (query_labels.float() @ db_labels.float().T) > 0


def _label_relevance(query_labels: Tensor, db_labels: Tensor) -> Callable[[slice], Tensor]:
    """Relevance rows for a slice of queries; integer comparison when every row is one-hot."""
    single = bool((query_labels.sum(1) == 1).all() and (db_labels.sum(1) == 1).all())
    if single:
        q_class, db_class = query_labels.float().argmax(1), db_labels.float().argmax(1)
        return lambda s: q_class[s, None] == db_class[None, :]
    db_t = db_labels.float().T.contiguous()
    return lambda s: (query_labels[s].float() @ db_t) > 0


def average_precision_at_k(relevant: Tensor) -> Tensor:
    """AP@K per query from the relevance of its ranked top K: (Q, K) bool -> (Q,) float.

    AP = sum_j rel_j * P@j / R_K with R_K = sum_j rel_j; 0 when R_K = 0.
    """
    rel = relevant.float()
    ranks = torch.arange(1, rel.shape[1] + 1, device=rel.device, dtype=torch.float32)
    precision_at_j = rel.cumsum(1) / ranks
    hits = rel.sum(1)
    return torch.where(hits > 0, (rel * precision_at_j).sum(1) / hits.clamp_min(1), 0.0)


@dataclass
class RetrievalResult:
    """Every number of one evaluation (see the module docstring for the definitions)."""

    map_at_k: float
    k: int
    precision_at: dict[int, float]
    pr_precision: list[float]
    pr_recall: list[float]
    num_queries: int
    num_database: int
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)

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
    pr_points: int = 40,
    pr_queries: int = 2000,
    chunk_budget: int = 2**24,
    progress: Callable[[int], None] | None = None,
) -> RetrievalResult:
    """Rank the database for every query and score the rankings.

    Args:
        distances: Maps a slice of query indices to their (q, N) non-negative distances to the
            whole database (e.g. ADC on PQ codes, or exact L2).
        query_labels: (Q, C) multi-hot labels of the queries.
        db_labels: (N, C) multi-hot labels of the database.
        k: K of mAP@K.
        precision_at: cut-offs N of precision@N.
        pr_points: number of thresholds of the precision-recall curve.
        pr_queries: evenly spaced queries the PR curve is estimated on (0 = all).
        chunk_budget: about how many (query, item) distances are held at once.
        progress: optional callable, given the number of queries done after every chunk.
    """
    start = time.perf_counter()
    num_q, num_db = len(query_labels), len(db_labels)
    if num_q == 0 or num_db == 0:
        raise ValueError("evaluation needs at least one query and one database item")
    if k < 1 or any(n < 1 for n in precision_at):
        raise ValueError(f"K and the precision cut-offs must be >= 1, got {k}, {precision_at}")
    if query_labels.shape[1] != db_labels.shape[1]:
        raise ValueError(
            f"query labels have {query_labels.shape[1]} classes, database labels "
            f"{db_labels.shape[1]}"
        )
    depth = min(max([k, *precision_at]), num_db)
    ap_sum = 0.0
    prec_sum = dict.fromkeys(precision_at, 0.0)
    thresholds: Tensor | None = None
    pr_prec = pr_rec = pr_count = None
    relevance = _label_relevance(query_labels, db_labels)
    stride = max(1, -(-num_q // pr_queries)) if pr_queries else 1
    pr_used = 0
    for chunk in query_chunks(num_q, num_db, chunk_budget):
        dist = distances(chunk).float()
        if dist.shape != (chunk.stop - chunk.start, num_db):
            raise ValueError(f"distance function returned {tuple(dist.shape)} for {chunk}")
        rel_full = relevance(chunk)
        _, idx = topk_smallest(dist, depth)
        rel = rel_full.gather(1, idx)
        ap_sum += average_precision_at_k(rel[:, :k]).sum().item()
        for n in precision_at:
            prec_sum[n] += rel[:, :n].float().mean(1).sum().item()
        if progress is not None:
            progress(chunk.stop)
        rows = torch.arange(chunk.start, chunk.stop)
        rows = (rows[rows % stride == 0] - chunk.start).tolist()
        if not rows:
            continue
        if thresholds is None:
            thresholds = _pr_thresholds(dist[rows], pr_points)
            pr_prec = torch.zeros(len(thresholds), dtype=torch.float64)
            pr_rec = torch.zeros_like(pr_prec)
            pr_count = torch.zeros_like(pr_prec)
        p, r, c = _pr_sums(dist[rows], rel_full[rows], thresholds)
        pr_prec += p
        pr_rec += r
        pr_count += c
        pr_used += len(rows)
    assert pr_prec is not None and pr_rec is not None and pr_count is not None
    return RetrievalResult(
        map_at_k=ap_sum / num_q,
        k=k,
        precision_at={n: prec_sum[n] / num_q for n in precision_at},
        pr_precision=(pr_prec / pr_count.clamp_min(1)).tolist(),
        pr_recall=(pr_rec / max(1, pr_used)).tolist(),
        num_queries=num_q,
        num_database=num_db,
        seconds=time.perf_counter() - start,
        extra={"pr_queries": pr_used},
    )


def _pr_thresholds(dist: Tensor, points: int) -> Tensor:
    """Distance thresholds at geometric fractions of the database, from a sample of distances."""
    flat = dist.flatten()
    flat = flat[:: max(1, flat.numel() // 1_000_000)].sort().values
    fractions = np.geomspace(1e-4, 1.0, points)
    positions = torch.from_numpy((fractions * (len(flat) - 1)).round().astype(np.int64))
    return flat[positions].unique()


def _pr_sums(dist: Tensor, rel_full: Tensor, thresholds: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per threshold: sum over queries of precision (where defined), of recall, and the count."""
    buckets = torch.bucketize(dist, thresholds)  # item counts as retrieved at t if dist <= t
    width = len(thresholds) + 1
    # One histogram per row over (bucket, relevant) pairs: column 2*b + rel.
    cells = buckets * 2 + rel_full.long()
    counts = torch.zeros(dist.shape[0], 2 * width).scatter_add_(1, cells, torch.ones_like(dist))
    counts = counts.view(-1, width, 2).cumsum(1)[:, :-1].double()
    hits = counts[..., 1]
    retrieved = counts.sum(-1)
    total = rel_full.sum(1, keepdim=True).double()
    has_any = retrieved > 0
    precision = torch.where(has_any, hits / retrieved.clamp_min(1), 0.0).sum(0)
    recall = torch.where(total > 0, hits / total.clamp_min(1), 0.0).sum(0)
    return precision, recall, has_any.double().sum(0)
