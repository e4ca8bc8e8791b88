"""The PQ index: codes, codebooks, ids and labels in memory and on disk, and faiss export.

Modules, lowest first (each imports only from those below it; pyproject.toml's import contract
holds them to it): ``format`` (names, versions, hashes), ``directory`` (reading and writing the
base files), ``segment_files`` (the manifest and segment files) and ``model_check`` (the index's
model.pt), ``pq_index`` (:class:`PQIndex` in memory, with ``load`` and ``save``), ``live``
(:class:`~quantrieve.index.live.LiveIndex`), ``writer`` (the write lock and changes),
``compaction``; ``hits``, ``faiss_export`` and ``ivf`` build on ``pq_index``.
"""

from typing import TYPE_CHECKING, Any

from quantrieve.index.format import INDEX_FORMAT, INDEX_VERSION, IndexFormatError

if TYPE_CHECKING:
    from quantrieve.index.pq_index import PQIndex


def __getattr__(name: str) -> Any:
    # PQIndex on first use: the torch-free modules of this package import without torch
    if name == "PQIndex":
        from quantrieve.index.pq_index import PQIndex

        return PQIndex
    raise AttributeError(f"module 'quantrieve.index' has no attribute {name!r}")


__all__ = ["INDEX_FORMAT", "INDEX_VERSION", "IndexFormatError", "PQIndex"]
