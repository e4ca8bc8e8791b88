"""Product-quantization maths: look-up tables, ADC distances, exact top-k (bottom layer)."""

from quantrieve.pq.adc import (
    DISTANCES,
    ADCScorer,
    CodeSearcher,
    GatherADC,
    RowFilter,
    adc_distances,
    lookup_tables,
    search_codes,
    squared_l2_distances,
)
from quantrieve.pq.bits import bits_per_book, code_bits, is_codeword_count
from quantrieve.pq.hidden import HiddenRows
from quantrieve.pq.ranking import query_chunks, topk_smallest
from quantrieve.pq.refine import (
    DEFAULT_REFINE_DEPTH,
    REFINE_DTYPES,
    refine_head,
    refine_ranking,
)

__all__ = [
    "DEFAULT_REFINE_DEPTH",
    "DISTANCES",
    "REFINE_DTYPES",
    "ADCScorer",
    "CodeSearcher",
    "GatherADC",
    "HiddenRows",
    "RowFilter",
    "adc_distances",
    "bits_per_book",
    "code_bits",
    "is_codeword_count",
    "lookup_tables",
    "query_chunks",
    "refine_head",
    "refine_ranking",
    "search_codes",
    "squared_l2_distances",
    "topk_smallest",
]
