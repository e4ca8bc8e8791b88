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
``k_factor = R / 10``, so a faiss search for the top 10 re-scores the first R candidates, as
quantrieve does (in squared L2, which orders like ``l2``), but for one thing: where a tie group
of the first stage straddles place R, faiss cuts it there, by its own tie order, while
quantrieve's head takes in the rest of the group (:mod:`quantrieve.pq.refine`). The two
agree wherever no tie group straddles place R. ``refine=False`` exports the codes alone.

An index that refines with backbone vectors (``refine_source="backbone"``) re-scores with a
second query vector, the query's unit backbone representation, which ``IndexRefine`` alone
cannot take: it hands both stages the one query it was given. The export therefore takes the
two query vectors side by side, ``[embedding | backbone]`` (``M * d + W`` floats, the ONNX
encoder's two outputs concatenated): the first stage is ``IndexPreTransform`` of a
``RemapDimensionsTransform`` keeping the first ``M * d`` dimensions over the PQ index above,
the refine stage the same over an ``IndexFlatL2`` of the unit backbone vectors keeping the last
``W``. Squared L2 between unit vectors orders like quantrieve's re-scoring (cosine), so the
faiss search is the same two-stage search, in plain faiss, with no custom code at query time.
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
    index that refines (and ``refine``), wrapped in ``IndexRefine``; one refining by backbone
    vectors takes ``[embedding | backbone]`` queries (module docstring)."""
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
    flat = faiss.IndexFlatL2(index.refine.shape[1])
    flat.add(np.ascontiguousarray(index.refine, dtype=np.float32))
    if index.refine_source == "backbone":
        width = index.refine.shape[1]
        first = faiss.IndexPreTransform(_keep_dimensions(dim + width, range(dim)), first)
        flat = faiss.IndexPreTransform(_keep_dimensions(dim + width, range(dim, dim + width)), flat)
    refined = faiss.IndexRefine(first, flat)
    refined.referenced_objects = [first, flat]  # the Python objects outlive the C++ view
    refined.k_factor = index.refine_depth / REFINE_EXPORT_K
    return refined


def faiss_query_width(index: PQIndex, refine: bool = True) -> int:
    """How many floats a query to the exported index has: ``M * d``, plus the backbone width
    for an index exported with its backbone refinement (module docstring)."""
    m, _, dsub = index.codebooks.shape
    if refine and index.refine is not None and index.refine_source == "backbone":
        return m * dsub + index.refine.shape[1]
    return m * dsub


def _keep_dimensions(d_in: int, keep: range) -> faiss.RemapDimensionsTransform:
    """A transform from ``d_in`` floats to the dimensions in ``keep``, in order."""
    transform = faiss.RemapDimensionsTransform(d_in, len(keep), True)
    faiss.copy_array_to_vector(np.asarray(keep, dtype=np.int32), transform.map)
    return transform


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
