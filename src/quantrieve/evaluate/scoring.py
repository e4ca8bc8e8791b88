"""The one evaluation entry point of the pipeline: labels as arrays, cut-offs capped at the
database size, and the ADC ranking of PQ codes (the distances every quantrieve search uses).

:func:`~quantrieve.evaluate.retrieval.evaluate_retrieval` holds the metrics; this module only
prepares its inputs, so training-time validation, ``quantrieve evaluate``, the demo and the
benchmark score rankings the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from quantrieve.evaluate.retrieval import PR_QUERIES, RetrievalResult, evaluate_retrieval
from quantrieve.pq import (
    ADCScorer,
    code_bits,
    lookup_tables,
    refine_ranking,
)
from quantrieve.pq.settings import tie_width
from quantrieve.runtime.progress import Progress


def evaluate_distances(
    distances: Callable[[slice], Tensor],
    query_labels: np.ndarray | Tensor,
    db_labels: np.ndarray | Tensor,
    k: int = 1000,
    precision_at: Sequence[int] = (10, 100, 1000),
    progress: Progress | None = None,
    pr_queries: int = PR_QUERIES,
    rerank: Callable[[slice, Tensor, Tensor], Tensor] | None = None,
    rerank_width: int = 0,
    ties: Tensor | None = None,
) -> RetrievalResult:
    """mAP@K, precision@N and PR curve of any distance function, K and N capped at the
    database size (mAP@1000 of a 500-item database is mAP@500; the result says which K).
    ``pr_queries``: evenly spaced queries the PR curve is estimated on (0 = all); ``ties``:
    the order of items at equal distance (default: a fixed pseudo-random one,
    :func:`~quantrieve.evaluate.retrieval.tie_order`)."""
    query_labels = torch.as_tensor(np.asarray(query_labels))
    db_labels = torch.as_tensor(np.asarray(db_labels))
    num_db = len(db_labels)
    return evaluate_retrieval(
        distances,
        query_labels,
        db_labels,
        k=min(k, num_db),
        precision_at=[min(n, num_db) for n in precision_at],
        pr_queries=pr_queries,
        progress=progress,
        rerank=rerank,
        rerank_width=rerank_width,
        ties=ties,
    )


def evaluate_codes(
    queries: Tensor,
    codebooks: Tensor | np.ndarray,
    codes: Tensor | np.ndarray,
    query_labels: np.ndarray | Tensor,
    db_labels: np.ndarray | Tensor,
    k: int = 1000,
    precision_at: Sequence[int] = (10, 100, 1000),
    distance: str = "l2",
    progress: Progress | None = None,
    exclude: np.ndarray | None = None,
    pr_queries: int = PR_QUERIES,
    refine: tuple[Tensor | np.ndarray, int] | None = None,
    refine_queries: Tensor | None = None,
    ties: Tensor | None = None,
    refine_expand: int = 0,
) -> RetrievalResult:
    """Evaluate continuous query embeddings (Q, M*d) against PQ codes (N, M) by ADC.

    Args:
        queries: query embeddings f, float.
        codebooks: (M, K, d).
        codes: uint8 (N, M) database codes.
        distance: ``l2`` (the papers') or ``sqeuclidean`` (faiss's ADC).
        exclude: (P, 2) pairs (query, database row) moved to the end of that query's ranking
            (distance +inf): a query that is itself in the database is not its own hit.
        pr_queries: evenly spaced queries the PR curve is estimated on (0 = all); each ranks
            the whole database, the largest cost of an evaluation at millions of items.
        refine: ``(fine, depth)``: the database's finer copy (N, M*d) and R; the first R
            places of each ADC ranking are re-scored with it, as a search of an index that
            refines (:func:`~quantrieve.pq.refine_ranking`, the tie group at place R taken
            in as a search does). Excluded pairs stay excluded.
        refine_queries: the queries' vectors in the space of the finer copy, when it is not
            the embeddings' (an index that refines by ``backbone``); default ``queries``.
        refine_expand: with ``refine``, n > 0 re-scores each head once more against the mean
            of the query and its first n refined results (query expansion, as a search of an
            index with ``refine_expand`` = n); 0: off.
        ties: the order of items at equal distance, a permutation of the database rows
            (default: :func:`~quantrieve.evaluate.retrieval.tie_order`, not the rows' order:
            an image folder is stored class by class). ``torch.arange(N)`` ranks ties as a
            search does.
    """
    books = torch.as_tensor(np.asarray(codebooks)).float()
    scorer = ADCScorer(torch.as_tensor(np.asarray(codes)), books.shape[1])
    queries = queries.float().cpu()
    pairs = torch.as_tensor(np.zeros((0, 2)) if exclude is None else exclude, dtype=torch.long)

    buffer: list[Tensor] = []  # one (chunk, N) matrix, reused: each chunk is consumed first

    def distances(s: slice) -> Tensor:
        rows = s.stop - s.start
        if not buffer or len(buffer[0]) < rows:
            buffer[:] = [torch.empty(rows, scorer.codes.shape[0])]
        dist = scorer(lookup_tables(queries[s], books, distance), out=buffer[0])
        inside = (pairs[:, 0] >= s.start) & (pairs[:, 0] < s.stop)
        if inside.any():
            dist[pairs[inside, 0] - s.start, pairs[inside, 1]] = float("inf")
        return dist

    rerank = None
    if refine is not None and refine[1] > 0:
        fine, depth = torch.as_tensor(np.asarray(refine[0])), refine[1]
        against = queries if refine_queries is None else refine_queries.float().cpu()

        def rerank(s: slice, ranked_d: Tensor, ranked: Tensor) -> Tensor:
            # Excluded pairs (distance +inf) are never re-scored: they stay last.
            return refine_ranking(
                against[s], ranked_d, ranked, fine, depth, distance, refine_expand
            )[1]

    result = evaluate_distances(
        distances,
        query_labels,
        db_labels,
        k,
        precision_at,
        progress,
        pr_queries,
        rerank,
        rerank_width=0 if rerank is None else tie_width(refine[1], 0),  # type: ignore[index]
        ties=ties,
    )
    result.extra["bits"] = code_bits(books.shape[0], books.shape[1])
    result.extra["distance"] = distance  # type: ignore[assignment]
    if rerank is not None:
        result.extra["refine_depth"] = refine[1]  # type: ignore[index]
        result.extra["refine_expand"] = refine_expand
    return result
