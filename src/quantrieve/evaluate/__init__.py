"""Retrieval evaluation: mAP@K, precision@N and PR curves of rankings."""

from quantrieve.evaluate.retrieval import (
    PR_METHOD,
    RetrievalResult,
    average_precision_at_k,
    evaluate_retrieval,
    interpolated_precision,
    relevance_matrix,
)
from quantrieve.evaluate.scoring import evaluate_codes, evaluate_distances

__all__ = [
    "PR_METHOD",
    "RetrievalResult",
    "average_precision_at_k",
    "evaluate_codes",
    "evaluate_distances",
    "evaluate_retrieval",
    "interpolated_precision",
    "relevance_matrix",
]
