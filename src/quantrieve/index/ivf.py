"""An inverted-file index over the learned codes, for databases past exhaustive search.

faiss ``IndexIVFPQ`` with ``by_residual=False`` and the model's own PQ codebooks: a coarse
quantizer (k-means with ``nlist`` centroids on the decoded database vectors) sends every item to
one list; a query scans the ``nprobe`` lists nearest to it and ranks their items by standard
ADC (squared L2 against the model's codewords), so the distances equal quantrieve's
``sqeuclidean`` ADC and ``nprobe = nlist`` finds exactly what exhaustive search finds. Items
keep their codes: they are added as their decoded vectors, which re-encode to themselves (this
is checked). A residual IVFPQ with injected codebooks would encode residuals with codebooks
trained for vectors, and rank wrongly.

The file ``faiss.write_index`` writes loads in plain faiss (``faiss.read_index``), whole or with
its inverted lists memory-mapped (``faiss.IO_FLAG_MMAP``): the lists then stay on disk and only
the pages a query touches are read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from quantrieve.index.faiss_export import check_faiss_output, unpack_codes
from quantrieve.index.format import IndexFormatError
from quantrieve.index.pq_index import PQIndex
from quantrieve.pq import bits_per_book
from quantrieve.runtime.atomic import atomic_path


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes an IVF index of ``num_items`` takes in memory (inverted lists held in RAM)."""

    num_items: int
    codes: int
    ids: int
    centroids: int
    codebooks: int

    @property
    def total(self) -> int:
        return self.codes + self.ids + self.centroids + self.codebooks


def estimate_memory(
    num_items: int, num_books: int, nbits: int, dim: int, nlist: int
) -> MemoryEstimate:
    """Memory of an IVF index before building it: per item its code (M * nbits / 8 bytes) and
    its 8-byte id in a list; the coarse centroids (nlist x dim float32) and codebooks."""
    code_bytes = math.ceil(num_books * nbits / 8)
    return MemoryEstimate(
        num_items=num_items,
        codes=num_items * code_bytes,
        ids=num_items * 8,
        centroids=nlist * dim * 4,
        codebooks=(1 << nbits) * dim * 4,
    )


def build_ivf(
    index: PQIndex, nlist: int, train_size: int = 100_000, seed: int = 0, chunk: int = 262_144
) -> faiss.IndexIVFPQ:
    """A faiss IVF index of ``index``'s items (item i is faiss id i) with its codebooks.

    Args:
        nlist: number of inverted lists (about sqrt(N) to 4 sqrt(N) is usual).
        train_size: items the coarse k-means is trained on (an even sample).
        chunk: items decoded and added at a time (bounded memory).
    """
    m, k, dsub = index.codebooks.shape
    nbits = bits_per_book(k)
    dim = m * dsub
    n = len(index)
    if not 1 <= nlist <= n:
        raise IndexFormatError(f"nlist must be in [1, {n}] (the number of items), got {nlist}")
    coarse = faiss.IndexFlatL2(dim)
    ivf = faiss.IndexIVFPQ(coarse, dim, nlist, m, nbits)
    ivf.by_residual = False
    faiss.copy_array_to_vector(index.codebooks.ravel(), ivf.pq.centroids)
    sample = np.linspace(0, n - 1, min(n, max(train_size, nlist))).astype(np.int64)
    vectors = _decode(index.codebooks, np.asarray(index.codes)[sample])
    kmeans = faiss.Kmeans(dim, nlist, niter=20, seed=seed, spherical=False)
    kmeans.train(vectors)
    coarse.add(kmeans.centroids)
    ivf.is_trained = True  # the PQ is the model's: nothing else to train
    for start in range(0, n, chunk):
        codes = np.asarray(index.codes[start : start + chunk])
        decoded = _decode(index.codebooks, codes)
        again = unpack_codes(ivf.pq.compute_codes(decoded), m, nbits)
        if not np.array_equal(again, codes):
            bad = int((again != codes).any(1).sum())
            raise IndexFormatError(
                f"{bad} items would change code in the IVF index (near-duplicate codewords)"
            )
        ivf.add_with_ids(decoded, np.arange(start, start + len(decoded), dtype=np.int64))
    return ivf


def _decode(codebooks: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Codewords of the codes, concatenated: float32 (n, M*d)."""
    books = np.arange(codebooks.shape[0])
    return codebooks[books, codes.astype(np.int64)].reshape(len(codes), -1).astype(np.float32)


def search_ivf(
    ivf: faiss.Index, queries: np.ndarray, k: int, nprobe: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (squared L2 ADC distances, item ids) per query, scanning ``nprobe`` lists; ids of
    missing results (fewer than k items in the probed lists) are -1."""
    faiss.extract_index_ivf(ivf).nprobe = nprobe
    return ivf.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def write_ivf(ivf: faiss.Index, path: str | Path, overwrite: bool = False) -> Path:
    """Write the IVF index file atomically (an existing file only with ``overwrite`` and only
    if it is a faiss index)."""
    path = check_faiss_output(path, overwrite)
    with atomic_path(path) as tmp:
        faiss.write_index(ivf, str(tmp))
    return path


def read_ivf(path: str | Path, mmap: bool = True) -> faiss.Index:
    """Load an IVF index file; with ``mmap`` the inverted lists stay on disk (memory-mapped)."""
    flags = faiss.IO_FLAG_MMAP if mmap else 0
    return faiss.read_index(str(path), flags)
