"""The Python API: :class:`Retriever`, the object between the command line and the layers."""

from quantrieve.api.retriever import Retriever, SearchHit, SearchResult, align_labels

__all__ = ["Retriever", "SearchHit", "SearchResult", "align_labels"]
