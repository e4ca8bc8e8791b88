"""Retrieval evaluation (mAP@K, precision@N, PR curve) and its plots."""

from quantrieve.evaluate.retrieval import (
    RetrievalResult,
    average_precision_at_k,
    evaluate_retrieval,
    relevance_matrix,
)

__all__ = ["RetrievalResult", "average_precision_at_k", "evaluate_retrieval", "relevance_matrix"]
