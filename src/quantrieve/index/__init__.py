"""PQ index directory, ADC search and faiss export."""

from quantrieve.index.search import (
    adc_distances,
    lookup_tables,
    search_codes,
    squared_l2_distances,
    topk_smallest,
)
from quantrieve.index.store import INDEX_FORMAT, INDEX_VERSION, IndexFormatError, PQIndex

__all__ = [
    "INDEX_FORMAT",
    "INDEX_VERSION",
    "IndexFormatError",
    "PQIndex",
    "adc_distances",
    "lookup_tables",
    "search_codes",
    "squared_l2_distances",
    "topk_smallest",
]
