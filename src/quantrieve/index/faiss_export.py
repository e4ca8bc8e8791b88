"""Export an index to faiss (``IndexPQ`` or ``IndexPQFastScan``) for serving elsewhere.

faiss ranks by squared L2 (standard ADC), which equals our ``sqeuclidean`` distance; the papers'
``l2`` (sum of non-squared sub-space distances) has no faiss equivalent and can rank slightly
differently. Codes are carried over exactly: the decoded vectors are re-encoded by faiss, and
the nearest codeword of a codeword is itself.
"""

from __future__ import annotations

import math
from pathlib import Path

import faiss
import numpy as np

from quantrieve.index.store import IndexFormatError, PQIndex


def to_faiss(index: PQIndex, fast_scan: bool = False) -> faiss.Index:
    """A faiss index holding the same codebooks and codes (item i is faiss id i)."""
    m, k, dsub = index.codebooks.shape
    nbits = int(math.log2(k))
    dim = m * dsub
    if fast_scan:
        if nbits != 4:
            raise IndexFormatError(f"IndexPQFastScan needs K = 16 codewords, this index has {k}")
        out = faiss.IndexPQFastScan(dim, m, nbits)
    else:
        out = faiss.IndexPQ(dim, m, nbits)
    faiss.copy_array_to_vector(index.codebooks.ravel(), out.pq.centroids)
    out.is_trained = True
    out.add(decode_all(index))
    return out


def decode_all(index: PQIndex, chunk: int = 65536) -> np.ndarray:
    """Codewords of every item, concatenated: float32 (N, M*d)."""
    m = index.num_books
    out = np.empty((len(index), m * index.codebooks.shape[2]), dtype=np.float32)
    books = np.arange(m)
    for start in range(0, len(index), chunk):
        codes = np.asarray(index.codes[start : start + chunk], dtype=np.int64)
        out[start : start + len(codes)] = index.codebooks[books, codes].reshape(len(codes), -1)
    return out


def export_faiss(index: PQIndex, path: str | Path, fast_scan: bool = False) -> Path:
    """Write the faiss index file (``faiss.read_index`` loads it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    faiss.write_index(to_faiss(index, fast_scan), str(path))
    return path
