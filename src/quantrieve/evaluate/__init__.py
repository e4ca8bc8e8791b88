"""Retrieval evaluation (mAP@K, precision@N, PR curve) and its plots."""

from quantrieve.evaluate.retrieval import (
    PR_METHOD,
    RetrievalResult,
    average_precision_at_k,
    evaluate_retrieval,
    interpolated_precision,
    relevance_matrix,
)

__all__ = [
    "PR_METHOD",
    "RetrievalResult",
    "average_precision_at_k",
    "evaluate_retrieval",
    "interpolated_precision",
    "relevance_matrix",
]
