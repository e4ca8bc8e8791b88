"""The PQ index: codes, codebooks, ids and labels in memory and on disk, and faiss export."""

from quantrieve.index.store import INDEX_FORMAT, INDEX_VERSION, IndexFormatError, PQIndex

__all__ = ["INDEX_FORMAT", "INDEX_VERSION", "IndexFormatError", "PQIndex"]
