"""Product-quantization maths: look-up tables, ADC distances, exact top-k (bottom layer).

The names below are imported on first use (PEP 562), so the torch-free parts (``pq.bits``,
``DISTANCES``, ``DEFAULT_REFINE_DEPTH``) are importable without importing torch.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from quantrieve.pq.settings import DEFAULT_REFINE_DEPTH, DISTANCES

_LAZY = {
    "ADCScorer": "quantrieve.pq.adc",
    "CodeSearcher": "quantrieve.pq.adc",
    "GatherADC": "quantrieve.pq.adc",
    "RowFilter": "quantrieve.pq.adc",
    "adc_distances": "quantrieve.pq.adc",
    "lookup_tables": "quantrieve.pq.adc",
    "search_codes": "quantrieve.pq.adc",
    "squared_l2_distances": "quantrieve.pq.adc",
    "bits_per_book": "quantrieve.pq.bits",
    "code_bits": "quantrieve.pq.bits",
    "is_codeword_count": "quantrieve.pq.bits",
    "HiddenRows": "quantrieve.pq.hidden",
    "query_chunks": "quantrieve.pq.ranking",
    "topk_smallest": "quantrieve.pq.ranking",
    "REFINE_DTYPES": "quantrieve.pq.refine",
    "refine_head": "quantrieve.pq.refine",
    "refine_ranking": "quantrieve.pq.refine",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'quantrieve.pq' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


if TYPE_CHECKING:
    from quantrieve.pq.adc import (
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
    from quantrieve.pq.refine import REFINE_DTYPES, refine_head, refine_ranking

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
