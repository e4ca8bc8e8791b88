"""Shallow baselines on raw pixels, scored by the same evaluator as the deep models.

- ``pq``: faiss product quantization (Jegou et al., TPAMI 2011) with the same M and K as the
  deep model; queries stay uncompressed (ADC), ranked with either distance.
- ``opq``: PQ after faiss' optimised rotation (Ge et al., CVPR 2013).
- ``itq``: PCA to ``bits`` dimensions + iterative quantization (Gong & Lazebnik, CVPR 2011),
  binary codes ranked by Hamming distance.
- ``exact``: exhaustive L2 on the raw pixels (the upper reference of the compressed methods).

Pixels are scaled to [0, 1] and flattened; the database trains the quantizers (unsupervised).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np
import torch
from torch import Tensor

from quantrieve.config import METHODS, Method
from quantrieve.errors import QuantrieveError
from quantrieve.pq import adc_distances, bits_per_book, lookup_tables, squared_l2_distances

#: The shallow methods of the one registry of methods (:data:`quantrieve.config.METHODS`):
#: ``quantrieve baseline``, the benchmark grid and its cells take their names and lines from it.
BASELINES: dict[str, Method] = {
    name: method for name, method in METHODS.items() if method.kind == "shallow"
}


def flatten_pixels(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) to float32 (N, H*W*C) in [0, 1]."""
    flat = np.asarray(images).reshape(len(images), -1)
    return np.ascontiguousarray(flat, dtype=np.float32) / 255.0


@dataclass
class PixelBaseline:
    """A fitted baseline: turns query vectors into (q, N) distances to the encoded database."""

    name: str
    bits: int
    distances: Callable[[slice], Tensor]


def _pq_codebooks(pq: faiss.ProductQuantizer) -> np.ndarray:
    return faiss.vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub)


def _train_pq(x: np.ndarray, num_books: int, nbits: int, seed: int) -> faiss.ProductQuantizer:
    pq = faiss.ProductQuantizer(x.shape[1], num_books, nbits)
    pq.cp.seed = seed
    pq.verbose = False
    pq.train(x)
    return pq


def fit_baseline(
    name: str,
    database: np.ndarray,
    queries: np.ndarray,
    num_books: int = 8,
    num_codewords: int = 16,
    distance: str = "sqeuclidean",
    seed: int = 0,
) -> PixelBaseline:
    """Fit a baseline on the database pixels and prepare query-to-database distances.

    Args:
        name: one of ``pq``, ``opq``, ``itq``, ``exact``.
        database: uint8 images (N, H, W, C); also the (unlabelled) training set.
        queries: uint8 images (Q, H, W, C).
        num_books, num_codewords: M and K; ITQ uses ``M * log2(K)`` bits.
        distance: ADC distance for ``pq``/``opq``: ``sqeuclidean`` (faiss) or ``l2``.
    """
    if name not in BASELINES:
        raise QuantrieveError(f"unknown baseline '{name}'; one of {tuple(BASELINES)}")
    x, q = flatten_pixels(database), flatten_pixels(queries)
    nbits = bits_per_book(num_codewords)
    bits = num_books * nbits
    dim = x.shape[1]
    if name in ("pq", "opq") and dim % num_books:
        # Pad with zero columns so that every book gets the same number of pixels.
        pad = num_books - dim % num_books
        x, q = np.pad(x, ((0, 0), (0, pad))), np.pad(q, ((0, 0), (0, pad)))
    if name == "exact":
        xt, qt = torch.from_numpy(x), torch.from_numpy(q)
        return PixelBaseline(name, 0, lambda s: squared_l2_distances(qt[s], xt))
    if name == "itq":
        itq = faiss.ITQTransform(x.shape[1], bits, True)
        itq.train(x)
        xb = torch.from_numpy(itq.apply(x) > 0).float() * 2 - 1
        qb = torch.from_numpy(itq.apply(q) > 0).float() * 2 - 1
        # Hamming distance of +-1 codes: (bits - <a, b>) / 2.
        return PixelBaseline(name, bits, lambda s: (bits - qb[s] @ xb.T) / 2)
    if name == "opq":
        opq = faiss.OPQMatrix(x.shape[1], num_books)
        opq.verbose = False
        trainer_pq = faiss.ProductQuantizer(x.shape[1], num_books, nbits)
        trainer_pq.cp.seed = seed
        opq.pq = trainer_pq  # train the rotation with the K the codes will use
        opq.train(x)
        x, q = opq.apply(x), opq.apply(q)
    pq = _train_pq(x, num_books, nbits, seed)
    codebooks = torch.from_numpy(_pq_codebooks(pq))
    # Nearest codeword per book, as faiss' compute_codes, but one uint8 per book (unpacked).
    codes = lookup_tables(torch.from_numpy(x), codebooks, "sqeuclidean").argmin(-1).to(torch.uint8)
    qt = torch.from_numpy(q)
    return PixelBaseline(
        name, bits, lambda s: adc_distances(lookup_tables(qt[s], codebooks, distance), codes)
    )
