"""Exact top-k ADC search at 4-bit FastScan speed, certified against the 8-bit rounding.

faiss's ``IndexPQFastScan`` scans 4-bit codes with in-register 8-bit look-up tables: fast, but
its tables are rounded, so its ranking is approximate. Any additive per-book table (Q, M, 16)
can be scanned that way: an inner-product FastScan index whose codebook for every book is the
16 x 16 identity (one-hot codewords) holds the codes themselves, and the query ``-T`` flattened
makes an item's inner product minus its distance.

faiss rounds each query's tables (``quantize_lut::round_uint8_per_column``) to
``q[m, j] = round((max_j T[m] - T[m, j]) * a)`` with one scale ``a = 255 / max_m span_m`` and
adds them exactly in uint16. This module asks faiss for those very tables
(``compute_quantized_LUT``), so the bound involves no guess about faiss's rounding. With
``u[m, j] = T[m, j] + q[m, j] / a`` and ``lo_m = min_j u[m, j]``, every item n with codes c_n
has the exact (real-valued) distance

    T_n = sum_m T[m, c_nm] = sum_m (u[m, c_nm] - q[m, c_nm] / a) >= sum_m lo_m - accu_n / a,

where ``accu_n = sum_m q[m, c_nm]`` is faiss's integer score (larger = closer). The float32
distance the exact path computes differs from T_n by at most ``(M - 1) * 2^-24 * S`` (M - 1
additions, ``S = sum_m max_j |T[m, j]|``); the margin taken is twice that.

The search (:class:`FastScan`): faiss returns the k' items of highest accu; they are re-scored
exactly by the caller's arithmetic (bit-identical to the exact scan) and ranked by (distance,
row). Every item faiss left out has accu <= the smallest accu among the candidates, so its
distance is at least ``L = sum_m lo_m - min accu / a - margin``. When ``L > d_k`` (the k-th
exact distance; strictly, so an item tied with the k-th, whatever its row, is never outside)
the candidates hold the whole top-k with its ties and the answer is exact. Otherwise k' grows
(x ``growth``) and the query is scanned again; past ``max_fraction`` of the items it is
scored exhaustively by the caller's exact scan.

A filter (``allowed``, a mask of the items a search may return) changes nothing in the bound:
candidates outside it are dropped before the top-k is taken, so the k-th distance is that of
the k-th allowed candidate, and the certificate still speaks of every item faiss left out. The
first k' is scaled by the inverse of the allowed fraction, so that about ``FIRST_FACTOR * k``
allowed items are expected among the candidates.

Rows appended to a live index (:meth:`FastScan.extended`) join faiss's packed codes only in
batches: the last rows, at most :data:`MAX_TAIL` of them, are left out of faiss's index and are
candidates of every scan, re-scored exactly like faiss's candidates. The bound speaks of the
indexed items faiss left out, so the result is unchanged; an add costs packing its own rows
and, once per :data:`MAX_TAIL` added rows, one copy of the packed codes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import faiss
import numpy as np
import torch
from torch import Tensor

from quantrieve.pq.hidden import HiddenRows
from quantrieve.pq.ranking import topk_smallest

#: The codewords per book the 4-bit scan handles.
FASTSCAN_CODEWORDS = 16

#: Items of faiss's scan block (``bbs``).
_BLOCK = 32

#: First candidate count: ``max(FIRST_FACTOR * k, MIN_CANDIDATES)``.
MIN_CANDIDATES = 64
FIRST_FACTOR = 2

#: The most appended rows left out of faiss's packed codes (each scan re-scores them all).
MAX_TAIL = 32_768

#: Float32 rounding of a sum of M table entries: at most (M - 1) units of 2^-24 of S.
_UNIT = 2.0**-24

RowScorer = Callable[[Tensor, Tensor], Tensor]
"""``rescore(tables (Q, M, K), rows (Q, C) int64) -> (Q, C)`` exact float32 distances."""

FullScorer = Callable[[Tensor], Tensor]
"""``exact(tables (Q, M, K)) -> (Q, N)`` exact float32 distances to every item."""


def fastscan_supported(num_books: int, num_codewords: int, num_items: int) -> bool:
    """Whether codes of this shape can be scanned: 16 codewords, uint16 sums that cannot
    overflow (M * 255 < 65536) and fewer than 2^31 items."""
    return (
        num_codewords == FASTSCAN_CODEWORDS
        and 1 <= num_books <= 257
        and 0 < num_items < 2**31 - _BLOCK
    )


def _new_index(num_books: int) -> faiss.IndexPQFastScan:
    """An empty inner-product FastScan index with one-hot codewords in every book."""
    k = FASTSCAN_CODEWORDS
    index = faiss.IndexPQFastScan(num_books * k, num_books, 4, faiss.METRIC_INNER_PRODUCT)
    eye = np.tile(np.eye(k, dtype=np.float32)[None], (num_books, 1, 1))
    faiss.copy_array_to_vector(eye.ravel(), index.pq.centroids)
    index.is_trained = True
    return index


def _one_hot(codes: np.ndarray) -> np.ndarray:
    """float32 (n, M*16): the codewords of ``codes`` in the one-hot codebook."""
    n, m = codes.shape
    out = np.zeros((n, m * FASTSCAN_CODEWORDS), dtype=np.float32)
    cols = codes.astype(np.int64) + np.arange(m) * FASTSCAN_CODEWORDS
    out[np.arange(n)[:, None], cols] = 1.0
    return out


def _table_bytes(index: faiss.IndexPQFastScan) -> np.ndarray:
    """A writable uint8 view of the index's packed codes."""
    size = index.codes.size()
    if size == 0:
        return np.zeros(0, dtype=np.uint8)
    return faiss.rev_swig_ptr(index.codes.get(), size)


def _probe(codes: np.ndarray) -> np.ndarray:
    """Nibbles (bytes * 2,) of one block of 32 items as faiss's add path packs them."""
    index = _new_index(codes.shape[1])
    index.add(_one_hot(codes))
    packed = _table_bytes(index)
    return np.stack([packed & 0x0F, packed >> 4], axis=1).reshape(-1)


@lru_cache(maxsize=16)
def _layout(num_books: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Where faiss packs code m of the i-th item of a 32-item block: byte offsets and bit
    shifts (32, M), and the bytes per block. Learned from faiss's own add path (one probe per
    book, then one per bit of the item's place in the block), so the packing follows whatever
    layout this faiss uses."""
    offsets = np.full((_BLOCK, num_books), -1, dtype=np.int64)
    shifts = np.zeros((_BLOCK, num_books), dtype=np.uint8)
    bits = _BLOCK.bit_length() - 1
    item_bits = []
    for b in range(bits):
        codes = np.zeros((_BLOCK, num_books), dtype=np.uint8)
        codes[(np.arange(_BLOCK) >> b) & 1 == 1] = 15
        item_bits.append(_probe(codes) == 15)
    place = sum(lit.astype(np.int64) << b for b, lit in enumerate(item_bits))
    block_bytes = 0
    for m in range(num_books):
        codes = np.zeros((_BLOCK, num_books), dtype=np.uint8)
        codes[:, m] = 15
        nibbles = _probe(codes)
        block_bytes = len(nibbles) // 2
        (where,) = np.nonzero(nibbles)
        if len(where) != _BLOCK or not (nibbles[where] == 15).all():
            raise RuntimeError("unexpected faiss FastScan code layout")
        offsets[place[where], m] = where // 2
        shifts[place[where], m] = 4 * (where % 2)
    if (offsets < 0).any():
        raise RuntimeError("unexpected faiss FastScan code layout")
    return offsets, shifts, block_bytes


@lru_cache(maxsize=16)
def _nibble_sources(num_books: int) -> tuple[np.ndarray, np.ndarray]:
    """For each byte of a packed block: which code of the block's 32 x M (item-major) goes in
    its low and its high nibble (index 32 * M: none, a zero)."""
    offsets, shifts, block_bytes = _layout(num_books)
    none = _BLOCK * num_books
    low = np.full(block_bytes, none, dtype=np.int64)
    high = np.full(block_bytes, none, dtype=np.int64)
    for i in range(_BLOCK):
        for book in range(num_books):
            side = low if shifts[i, book] == 0 else high
            side[offsets[i, book]] = i * num_books + book
    return low, high


def _pack(codes: np.ndarray) -> np.ndarray:
    """uint8 (blocks, block bytes): ``codes`` (n, M) packed as faiss packs 32-item blocks (the
    last block padded with code 0): two gathers of the codes, one per nibble of every byte."""
    n, m = codes.shape
    low, high = _nibble_sources(m)
    blocks = -(-n // _BLOCK)
    flat = np.zeros((blocks, _BLOCK * m + 1), dtype=np.uint8)  # the last column: a zero
    full = n // _BLOCK
    flat[:full, :-1] = codes[: full * _BLOCK].reshape(full, _BLOCK * m)
    if n > full * _BLOCK:
        flat[full, : (n - full * _BLOCK) * m] = codes[full * _BLOCK :].reshape(-1)
    # np.take along an axis: a plain copy loop, about 20x faster than fancy indexing here
    return np.take(flat, low, axis=1) | (np.take(flat, high, axis=1) << 4)


def _index_of(packed: np.ndarray, num_items: int, num_books: int) -> faiss.IndexPQFastScan:
    """An inner-product FastScan index holding these packed blocks of ``num_items`` items."""
    index = _new_index(num_books)
    index.codes.resize(packed.size)
    _table_bytes(index)[:] = packed.ravel()
    index.ntotal = num_items
    index.ntotal2 = len(packed) * _BLOCK
    return index


def build_fastscan_index(codes: np.ndarray) -> faiss.IndexPQFastScan:
    """An inner-product ``IndexPQFastScan`` holding uint8 ``codes`` (N, M) of 16 codewords per
    book, packed directly (faiss's add would encode one-hot vectors: 100 s at 10M items)."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    return _index_of(_pack(codes), len(codes), codes.shape[1])


def extend_fastscan_index(index: faiss.IndexPQFastScan, codes: np.ndarray) -> faiss.IndexPQFastScan:
    """A new index holding ``codes`` (N, M), whose first ``index.ntotal`` rows are the codes
    ``index`` holds: its full blocks are copied as bytes and only the rest is packed (an append
    costs a copy, not a packing of every item). ``index`` is left as it is."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    n, m = codes.shape
    old = int(index.ntotal)
    if n < old:
        raise ValueError(f"cannot extend an index of {old} items to {n}")
    _, _, block_bytes = _layout(m)
    full = old // _BLOCK
    tail = _pack(codes[full * _BLOCK :]) if n > full * _BLOCK else np.zeros((0, block_bytes))
    packed = np.empty((full + len(tail), block_bytes), dtype=np.uint8)
    packed[:full] = _table_bytes(index)[: full * block_bytes].reshape(full, block_bytes)
    packed[full:] = tail
    return _index_of(packed, n, m)


@dataclass
class FastScanResult:
    """Top-k of a certified scan: distances and rows (Q, k), and the scans each query took
    (``rounds``; 0 for a query scored exhaustively after its scans failed: see ``exhaustive``).
    """

    distances: Tensor
    indices: Tensor
    rounds: Tensor
    exhaustive: Tensor


class FastScan:
    """Certified-exact top-k over fixed 4-bit codes (see the module docstring).

    Args:
        codes: uint8 (N, M), 16 codewords per book.
        growth: the factor k' grows by when a certificate fails.
        max_fraction: past this fraction of N candidates, a query is scored exhaustively.
    """

    def __init__(
        self,
        codes: Tensor,
        growth: int = 4,
        max_fraction: float = 0.05,
        index: faiss.IndexPQFastScan | None = None,
    ) -> None:
        num_items, num_books = codes.shape
        if not fastscan_supported(num_books, FASTSCAN_CODEWORDS, num_items):
            raise ValueError(f"codes {tuple(codes.shape)} cannot be scanned by FastScan")
        self.codes = codes
        self.num_items = num_items
        self.num_books = num_books
        self.growth = growth
        self.max_fraction = max_fraction
        # ``index``: the leading rows of these codes already packed (:meth:`extended`); the
        # rest (the tail) are candidates of every scan
        self.index = build_fastscan_index(codes.numpy()) if index is None else index
        self.indexed = int(self.index.ntotal)
        if not 0 < self.indexed <= num_items:
            raise ValueError(f"a packed index of {self.indexed} items for {num_items} codes")
        self._tail = torch.arange(self.indexed, num_items)
        self._book_offsets = torch.arange(num_books) * FASTSCAN_CODEWORDS

    def extended(self, codes: Tensor) -> FastScan:
        """The scan of ``codes`` (N, M), whose first rows are this scan's codes (rows
        appended). faiss's packed codes (read-only, shared with this scan) are kept while at
        most :data:`MAX_TAIL` rows lie past them; beyond that the rows not yet packed are
        packed into a copy. This scan is left as it is."""
        if len(codes) < self.num_items:
            raise ValueError(f"cannot extend a scan of {self.num_items} items to {len(codes)}")
        index = self.index
        if len(codes) - self.indexed > MAX_TAIL:
            index = extend_fastscan_index(self.index, codes.numpy())
        return FastScan(codes, self.growth, self.max_fraction, index=index)

    def nbytes(self) -> int:
        """Memory of faiss's packed codes (N * M / 2 bytes; the codes themselves are shared)."""
        return int(self.index.codes.size())

    def _quantized(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """faiss's uint8 tables (Q, M, 16) and scales a (Q,) for these queries."""
        num = len(queries)
        m2 = self.index.M2
        lut = np.zeros((num, m2 * FASTSCAN_CODEWORDS), dtype=np.uint8)
        norm = np.zeros((num, 2), dtype=np.float32)
        self.index.compute_quantized_LUT(
            num,
            faiss.swig_ptr(queries),
            faiss.swig_ptr(lut),
            faiss.swig_ptr(norm),
            faiss.FastScanDistancePostProcessing(),
        )
        lut = lut.reshape(num, m2, FASTSCAN_CODEWORDS)[:, : self.num_books]
        return lut, norm[:, 0]

    def bounds(self, tables: Tensor) -> tuple[Tensor, Tensor, Tensor, np.ndarray]:
        """For tables (Q, M, 16): faiss's quantized tables as int64 (Q, M*16), the scale a,
        the offset ``sum_m lo_m - margin`` (float64), and the faiss query vectors."""
        t32 = tables.float().contiguous()
        queries = np.ascontiguousarray((-t32).reshape(len(t32), -1).numpy())
        lut, scale = self._quantized(queries)
        t64 = t32.double()
        q = torch.from_numpy(lut.astype(np.int64))
        a = torch.from_numpy(scale.astype(np.float64))
        inv = torch.where(a > 0, 1.0 / a.clamp_min(1e-300), torch.zeros_like(a))
        u = t64 + q.double() * inv[:, None, None]
        total = t64.abs().amax(2).sum(1)
        margin = 2 * max(self.num_books - 1, 1) * _UNIT * total + 1e-300
        offset = u.amin(2).sum(1) - margin
        return q.reshape(len(q), -1), inv, offset, queries

    def search(
        self,
        tables: Tensor,
        k: int,
        rescore: RowScorer,
        exact: FullScorer,
        allowed: Tensor | None = None,
        allowed_count: int | None = None,
        skip: HiddenRows | None = None,
    ) -> FastScanResult:
        """Top-k by (distance, row) for look-up tables (Q, M, 16), identical to ranking
        ``exact(tables)`` with :func:`~quantrieve.pq.topk_smallest`.

        ``rescore`` must compute, for given rows, the very float32 distances ``exact`` does.
        ``allowed``: bool (N,), the only items a query may return (None: all); the result is
        then ``exact(tables)`` with every other item's distance set to infinity, ranked, and
        cut to the allowed count (``allowed_count``, when the caller knows it: counting 10
        million flags takes tens of milliseconds).

        ``skip``: rows no query may return (deleted, not dropped yet), checked on the
        candidates only; like a mask of the others in ``allowed``, and combined with it
        (``allowed_count`` then counts the rows passing both).
        """
        num_q, n = len(tables), self.num_items
        share = 1.0
        if skip is not None and skip.count == 0:
            skip = None
        if allowed is not None and allowed.shape != (n,):
            raise ValueError(f"allowed must be a mask of ({n},) items")
        if allowed is not None or skip is not None:
            if allowed_count is not None:
                count = allowed_count
            elif allowed is None:
                count = n - skip.count  # type: ignore[union-attr]
            else:
                passing = allowed if skip is None else allowed & ~skip.mask()
                count = int(passing.count_nonzero())
            k = min(k, count)
            share = count / n if n else 1.0
        k = min(k, n)
        state = _Search(
            tables=tables,
            k=k,
            rescore=rescore,
            out_d=torch.zeros(num_q, k),
            out_i=torch.zeros(num_q, k, dtype=torch.int64),
            allowed=allowed,
            skip=skip,
        )
        rounds = torch.zeros(num_q, dtype=torch.int64)
        exhaustive = torch.zeros(num_q, dtype=torch.bool)
        if num_q == 0 or k == 0:
            return FastScanResult(state.out_d, state.out_i, rounds, exhaustive)
        finite = torch.isfinite(tables.float()).flatten(1).all(1)
        exhaustive |= ~finite
        state.pending = finite.nonzero().squeeze(1)
        if len(state.pending):
            state.qtab, state.inv, state.offset, state.queries = self.bounds(tables[state.pending])
            local = torch.arange(len(state.pending))
            packed = self.indexed
            width = min(max(int(FIRST_FACTOR * k / share), MIN_CANDIDATES), packed)
            limit = max(k, int(self.max_fraction * n))
            while len(local):
                if width > limit and width < packed:
                    exhaustive[state.pending[local]] = True
                    break
                rounds[state.pending[local]] += 1
                local = local[~self._round(state, local, width)]
                width = min(width * self.growth, packed)
        slow = exhaustive.nonzero().squeeze(1)
        if len(slow):
            full = exact(tables[slow])
            if allowed is not None:
                full = full.masked_fill(~allowed, float("inf"))
            if skip is not None:
                full = full.masked_fill(skip.mask(), float("inf"))
            d, i = topk_smallest(full, k)
            state.out_d[slow], state.out_i[slow] = d, i
        return FastScanResult(state.out_d, state.out_i, rounds, exhaustive)

    def _round(self, state: _Search, local: Tensor, width: int) -> Tensor:
        """One scan of k' = ``width`` candidates for the queries ``state.pending[local]``;
        writes the certified ones' results and returns which were certified."""
        sub = np.ascontiguousarray(state.queries[local.numpy()])
        _, labels = self.index.search(sub, width)
        # faiss keeps only items scoring above 0: a query whose other items all score 0
        # gets fewer candidates (labels -1), sorted here after the real ones.
        found = torch.from_numpy(labels)
        missing = found < 0
        rows = found.masked_fill(missing, self.indexed).sort(dim=1).values
        valid = rows < self.indexed
        rows = rows.clamp_max(self.indexed - 1)
        # faiss's score of every candidate, from its own quantized tables; an item left out
        # scores at most the lowest candidate (at most 0 when some candidates are missing).
        picked = self.codes.index_select(0, rows.reshape(-1)).long() + self._book_offsets
        keys = picked.reshape(len(rows), -1)
        accu = state.qtab[local].gather(1, keys).reshape(len(rows), width, -1).sum(2)
        accu = accu.masked_fill(~valid, 0)
        floor = state.offset[local] - accu.amin(1).double() * state.inv[local]
        if len(self._tail):  # rows not packed yet: candidates of every scan, after faiss's
            tail = self._tail.expand(len(rows), -1)
            rows = torch.cat([rows, tail], dim=1)
            valid = torch.cat([valid, torch.ones(tail.shape, dtype=torch.bool)], dim=1)
        queries = state.pending[local]
        k = state.k
        if state.allowed is not None:
            valid = valid & state.allowed[rows]
        if state.skip is not None:
            valid = valid & ~state.skip.of(rows)
        dist = state.rescore(state.tables[queries], rows).masked_fill(~valid, float("inf"))
        d, cols = topk_smallest(dist, k)
        certified = (floor > d[:, k - 1].double()) | (width >= self.indexed)
        good = certified.nonzero().squeeze(1)
        state.out_d[queries[good]] = d[good]
        state.out_i[queries[good]] = rows[good].gather(1, cols[good])
        return certified


@dataclass
class _Search:
    """The working state of one :meth:`FastScan.search`."""

    tables: Tensor
    k: int
    rescore: RowScorer
    out_d: Tensor
    out_i: Tensor
    pending: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    qtab: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    inv: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    offset: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    queries: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    allowed: Tensor | None = None
    skip: HiddenRows | None = None
