"""The Python API: :class:`Retriever`, the object between the command line and the layers, and
:func:`run_images`, which images a run or an index holds for a part."""

from quantrieve.api.retriever import Retriever, SearchHit, SearchResult, align_labels
from quantrieve.api.run_images import RunParts, run_images, run_parts

__all__ = [
    "Retriever",
    "RunParts",
    "SearchHit",
    "SearchResult",
    "align_labels",
    "run_images",
    "run_parts",
]
