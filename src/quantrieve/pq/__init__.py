"""Product-quantization maths: look-up tables, ADC distances, exact top-k (bottom layer)."""

from quantrieve.pq.adc import (
    DISTANCES,
    ADCScorer,
    CodeSearcher,
    GatherADC,
    adc_distances,
    lookup_tables,
    search_codes,
    squared_l2_distances,
)
from quantrieve.pq.ranking import query_chunks, topk_smallest

__all__ = [
    "DISTANCES",
    "ADCScorer",
    "CodeSearcher",
    "GatherADC",
    "adc_distances",
    "lookup_tables",
    "query_chunks",
    "search_codes",
    "squared_l2_distances",
    "topk_smallest",
]
