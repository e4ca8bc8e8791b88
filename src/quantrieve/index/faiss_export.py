"""Export an index to faiss (``IndexPQ`` or ``IndexPQFastScan``) for serving elsewhere.

faiss ranks by squared L2 (standard ADC), which equals our ``sqeuclidean`` distance; the papers'
``l2`` (sum of non-squared sub-space distances) has no faiss equivalent and can rank slightly
differently. ``IndexPQ`` receives our codes as they are, packed into faiss' layout (book m's
bits start at bit m * nbits, least significant bit first); ``IndexPQFastScan`` is converted
from that ``IndexPQ`` (faiss copies the codes into its blocked layout: nothing is re-encoded).
FastScan ranks with 8-bit quantized look-up tables: approximate, measured in
``benchmarks/results/search_scale.json``.

An index that refines (``refine.npy``) is exported as ``IndexRefine``: the PQ index above as
the first stage, the float16 embeddings, widened to float32, in an ``IndexFlatL2`` refine stage.
faiss re-scores ``k_factor * k`` candidates instead of a fixed depth R; the export sets
``k_factor = R / 10``, so a faiss search for the top 10 re-scores the same R candidates as
quantrieve (up to the tie order of the first stage, and in squared L2, which orders like
``l2``). ``refine=False`` exports the codes alone.

An index that refines with backbone vectors (``refine_source="backbone"``) has no faiss
equivalent: ``IndexRefine`` re-scores with the query vector the first stage searched with, and
those queries are the embeddings, not the backbone representations. Its export is refused
unless ``refine=False`` (the codes alone); the refine vectors can be given to faiss separately
(an ``IndexFlatL2`` of ``refine.npy`` with ``compute_distance_subset`` on the first stage's
candidates is the same two-stage search).
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from quantrieve.errors import OutputError
from quantrieve.index.format import IndexFormatError
from quantrieve.index.pq_index import PQIndex
from quantrieve.pq import bits_per_book
from quantrieve.runtime.atomic import atomic_path
from quantrieve.runtime.outputs import check_new_file

#: The k a refining export's ``k_factor`` is set for (R = k_factor * k).
REFINE_EXPORT_K = 10


def to_faiss(index: PQIndex, fast_scan: bool = False, refine: bool = True) -> faiss.Index:
    """A faiss index holding the same codebooks and codes (item i is faiss id i); for an
    index that refines (and ``refine``), wrapped in ``IndexRefineFlat`` (module docstring)."""
    m, k, dsub = index.codebooks.shape
    nbits = bits_per_book(k)
    dim = m * dsub
    if fast_scan and nbits != 4:
        raise IndexFormatError(f"IndexPQFastScan needs K = 16 codewords, this index has {k}")
    out = faiss.IndexPQ(dim, m, nbits)
    faiss.copy_array_to_vector(index.codebooks.ravel(), out.pq.centroids)
    out.is_trained = True
    out.add_sa_codes(pack_codes(np.asarray(index.codes), nbits))
    first = faiss.IndexPQFastScan(out) if fast_scan else out
    if not refine or index.refine is None:
        return first
    if index.refine_source != "embedding":
        raise IndexFormatError(
            f"this index refines with {index.refine_source} vectors, which faiss's IndexRefine "
            "cannot re-score (it re-scores with the embeddings the codes were searched with); "
            "export the codes alone (quantrieve export-faiss --no-refine, refine=False)"
        )
    flat = faiss.IndexFlatL2(dim)
    flat.add(np.ascontiguousarray(index.refine, dtype=np.float32))
    refined = faiss.IndexRefine(first, flat)
    refined.referenced_objects = [first, flat]  # the Python objects outlive the C++ view
    refined.k_factor = index.refine_depth / REFINE_EXPORT_K
    return refined


def pack_codes(codes: np.ndarray, nbits: int) -> np.ndarray:
    """(N, M) codes to faiss' packed bytes: book m at bits [m*nbits, (m+1)*nbits), LSB first."""
    shifts = np.arange(nbits, dtype=np.uint8)
    bits = (codes[:, :, None] >> shifts) & 1  # (N, M, nbits), least significant first
    return np.packbits(bits.reshape(len(codes), -1), axis=1, bitorder="little")


def unpack_codes(packed: np.ndarray, num_books: int, nbits: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: packed bytes to (N, M) uint8 codes."""
    bits = np.unpackbits(packed, axis=1, bitorder="little")[:, : num_books * nbits]
    weights = (1 << np.arange(nbits)).astype(np.uint16)
    return (bits.reshape(len(packed), num_books, nbits) * weights).sum(-1).astype(np.uint8)


FAISS_MAGIC_PREFIX = b"I"  # every faiss index file starts with a four-letter code "I..."


def check_faiss_output(path: str | Path, overwrite: bool = False) -> Path:
    """Refuse an existing file unless ``overwrite`` and it is a faiss index file itself."""
    path = check_new_file(path, overwrite, "faiss index")
    if path.exists():
        with open(path, "rb") as handle:
            head = handle.read(4)
        if len(head) < 4 or not head.startswith(FAISS_MAGIC_PREFIX) or not head.isalnum():
            raise OutputError(f"{path} is not a faiss index file; it is left as it is")
    return path


def export_faiss(
    index: PQIndex,
    path: str | Path,
    fast_scan: bool = False,
    overwrite: bool = False,
    refine: bool = True,
) -> Path:
    """Write the faiss index file (``faiss.read_index`` loads it), atomically.

    An existing file is replaced only with ``overwrite`` and only if it is a faiss index.
    """
    path = check_faiss_output(path, overwrite)
    built = to_faiss(index, fast_scan, refine)
    with atomic_path(path) as tmp:
        faiss.write_index(built, str(tmp))
    return path
