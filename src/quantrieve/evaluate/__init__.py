"""Retrieval evaluation: mAP@K, precision@N and PR curves of rankings."""

from quantrieve.evaluate.retrieval import (
    RetrievalResult,
    average_precision_at_k,
    evaluate_retrieval,
    relevance_matrix,
)
from quantrieve.evaluate.scoring import evaluate_codes, evaluate_distances

__all__ = [
    "RetrievalResult",
    "average_precision_at_k",
    "evaluate_codes",
    "evaluate_distances",
    "evaluate_retrieval",
    "relevance_matrix",
]
