"""Asymmetric distance computation (ADC) with a per-query look-up table, and exact search.

The bottom layer of quantrieve: pure tensor maths, imported by models, index and evaluation.

The query stays continuous (its embedding f), database items are uint8 PQ codes. For each
query a table T (M x K) holds the distance of each query sub-vector f_m to each codeword c_mk;
an item's distance is the sum over books of T[m, b_m]. Two distances:

- ``l2``: T = ||f_m - c_mk|| (not squared), as in SPQ and the HQC reference;
- ``sqeuclidean``: T = ||f_m - c_mk||^2, standard ADC (faiss ``IndexPQ``).

Everything is batched over a chunk of queries and the whole database; no per-query Python loop.
Rankings are ascending by distance with ties broken by database index (lower index first).
"""

from __future__ import annotations

import torch
from torch import Tensor

from quantrieve.pq.fastscan import FastScan, fastscan_supported
from quantrieve.pq.hidden import HiddenRows
from quantrieve.pq.ranking import query_chunks, topk_smallest
from quantrieve.pq.settings import DISTANCES


def lookup_tables(queries: Tensor, codebooks: Tensor, distance: str = "l2") -> Tensor:
    """Per-query look-up tables (Q, M, K) of sub-space distances.

    Args:
        queries: (Q, M*d) continuous query embeddings.
        codebooks: (M, K, d).
        distance: ``l2`` (non-squared, the papers') or ``sqeuclidean`` (standard ADC).
    """
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got '{distance}'")
    num_books, _, dim = codebooks.shape
    if queries.ndim != 2 or queries.shape[1] != num_books * dim:
        raise ValueError(
            f"queries must be (Q, {num_books * dim}) for codebooks {tuple(codebooks.shape)}, "
            f"got {tuple(queries.shape)}"
        )
    parts = queries.float().reshape(-1, num_books, dim).transpose(0, 1)  # (M, Q, d)
    books = codebooks.float()
    sq = (
        parts.pow(2).sum(-1, keepdim=True)
        - 2 * torch.bmm(parts, books.transpose(1, 2))
        + books.pow(2).sum(-1).unsqueeze(1)
    ).clamp_min(0)  # (M, Q, K)
    table = sq.sqrt() if distance == "l2" else sq
    return table.transpose(0, 1).contiguous()


def adc_distances(tables: Tensor, codes: Tensor) -> Tensor:
    """Distances (Q, N) of every query to every coded item: sum_m T[q, m, codes[n, m]].

    Loops over the M books (a handful), never over queries or items.
    """
    if tables.shape[1] != codes.shape[1]:
        raise ValueError(f"tables have {tables.shape[1]} books, codes {codes.shape[1]}")
    idx = codes.long()
    out = tables[:, 0, :].index_select(1, idx[:, 0])
    for m in range(1, codes.shape[1]):
        out += tables[:, m, :].index_select(1, idx[:, m])
    return out


class GatherADC:
    """ADC by gathering table entries: for each query, the sum over books of T[m, codes[:, m]],
    with no (Q, N, M) intermediate and memory linear in N.

    With K * K <= 256 (4-bit codes), books are paired: a table of K * K entries holds
    T[2p, a] + T[2p + 1, b], so every item costs M / 2 gathers instead of M (about twice as
    fast), and the pair's code a * K + b still fits a byte. The per-codes state is these keys,
    one uint8 column per pair (N * M / 2 bytes at 4 bits: the size of faiss's packed codes).
    Items are scored in blocks of about ``block_budget / Q`` items, each block's keys widened to
    int64 and its partial sums kept in cache, so the time per item stays flat from thousands to
    tens of millions of items.
    """

    def __init__(self, codes: Tensor, num_codewords: int, block_budget: int = 2**16) -> None:
        self.num_books = codes.shape[1]
        self.num_codewords = num_codewords
        self.paired = num_codewords * num_codewords <= 256 and self.num_books >= 2
        self.pairs = self.num_books // 2 if self.paired else 0
        keys = [codes[:, m] * num_codewords + codes[:, m + 1] for m in range(0, 2 * self.pairs, 2)]
        keys += [codes[:, m] for m in range(2 * self.pairs, self.num_books)]
        self.keys = torch.stack(keys).to(torch.uint8).contiguous()  # (columns, N)
        self.num_items = len(codes)
        self.block_budget = block_budget
        # [buffer, filled]: the key columns with spare room at their end that :meth:`extended`
        # writes into, and how many of them the last gather made from it uses (shared by
        # the gathers made from one another)
        self._spare: list | None = None

    def nbytes(self) -> int:
        """Memory of the keys."""
        return self.keys.numel()

    def extended(self, codes: Tensor) -> GatherADC:
        """The gather over ``codes`` (N, M), whose first rows are this gather's codes (rows
        appended): only the new rows' keys are computed, and written into the spare end of the
        key columns when this gather is the last one extended from them (no copy of the old
        keys; a new buffer of 1.25 times the items when they are outgrown: amortized O(added)).
        This gather's own keys are never written."""
        if len(codes) < self.num_items:
            raise ValueError(f"cannot extend a gather of {self.num_items} items to {len(codes)}")
        tail = GatherADC(codes[self.num_items :], self.num_codewords, self.block_budget)
        n, total = self.num_items, len(codes)
        grown = GatherADC(codes[:0], self.num_codewords, self.block_budget)
        spare = self._spare
        if spare is None or spare[1] != n or total > spare[0].shape[1]:
            capacity = max(total + 1024, int(total * 1.25))
            buffer = torch.empty((len(self.keys), capacity), dtype=self.keys.dtype)
            buffer[:, :n] = self.keys
            spare = [buffer, n]
        buffer = spare[0]
        buffer[:, n:total] = tail.keys
        spare[1] = total
        grown.keys = buffer[:, :total]
        grown._spare = spare
        grown.num_items = total
        return grown

    def _tables(self, tables: Tensor) -> list[Tensor]:
        """One (Q, entries) table per key column: pair sums, then the unpaired books."""
        q, k, pairs = len(tables), self.num_codewords, self.pairs
        out: list[Tensor] = []
        if pairs:
            summed = tables[:, 0 : 2 * pairs : 2, :, None] + tables[:, 1 : 2 * pairs : 2, None, :]
            out = list(summed.reshape(q, pairs, k * k).unbind(1))
        return out + list(tables[:, 2 * pairs :, :].unbind(1))

    def __call__(self, tables: Tensor, out: Tensor | None = None) -> Tensor:
        """Distances (Q, N) from look-up tables (Q, M, K); ``out`` as in :class:`ADCScorer`."""
        if tables.shape[1] != self.num_books:
            raise ValueError(f"tables have {tables.shape[1]} books, codes {self.num_books}")
        num_q = len(tables)
        dist = torch.empty(num_q, self.num_items) if out is None else out[:num_q]
        if num_q == 0:
            return dist
        parts = self._tables(tables.float())
        step = max(4096, self.block_budget // num_q)
        for start in range(0, self.num_items, step):
            cols = slice(start, min(start + step, self.num_items))
            keys = self.keys[:, cols].long()
            block = parts[0].index_select(1, keys[0])
            for part, column in zip(parts[1:], keys[1:], strict=True):
                block += part.index_select(1, column)
            dist[:, cols] = block
        return dist

    def rows(self, tables: Tensor, rows: Tensor) -> Tensor:
        """Distances (Q, C) of each query to its own ``rows`` (Q, C): bit-identical to the same
        columns of ``self(tables)`` (the same pair tables, added in the same order)."""
        if tables.shape[1] != self.num_books:
            raise ValueError(f"tables have {tables.shape[1]} books, codes {self.num_books}")
        parts = self._tables(tables.float())
        keys = self.keys.index_select(1, rows.reshape(-1)).long().reshape(-1, *rows.shape)
        out = parts[0].gather(1, keys[0])
        for part, column in zip(parts[1:], keys[1:], strict=True):
            out += part.gather(1, column)
        return out


#: The largest one-hot matrix :class:`ADCScorer` builds by default (256 MB: about 500,000 items
#: at M = 8, K = 16); beyond it, it gathers.
MAX_ONEHOT_BYTES = 2**28


class ADCScorer:
    """Fast ADC against a fixed set of codes, for scoring many query chunks.

    With ``onehot`` (the default when it fits in ``max_onehot_bytes``), the codes are expanded
    once into a one-hot matrix H (N, M*K) and distances become one matrix product
    ``T.reshape(q, M*K) @ H.T``: the sum over books of the selected table entries, computed by
    BLAS instead of M gathers. Otherwise (large N) it gathers with :class:`GatherADC`.
    """

    def __init__(
        self,
        codes: Tensor,
        num_codewords: int,
        max_onehot_bytes: int | None = None,
        gather: GatherADC | None = None,
    ) -> None:
        if max_onehot_bytes is None:
            max_onehot_bytes = MAX_ONEHOT_BYTES
        self.codes = codes
        self.num_codewords = num_codewords
        self.max_onehot_bytes = max_onehot_bytes
        n, m = codes.shape
        self.onehot: Tensor | None = None
        self.gather: GatherADC | None = None
        # [buffer, filled]: the one-hot rows with room at their end (see :meth:`extended`)
        self._spare: list | None = None
        if n * m * num_codewords * 4 <= max_onehot_bytes:
            self.onehot = _one_hot_rows(codes, num_codewords)
        else:  # ``gather``: the same codes' gather columns, when the caller has them
            self.gather = gather if gather is not None else GatherADC(codes, num_codewords)

    def extended(self, codes: Tensor, gather: GatherADC | None = None) -> ADCScorer:
        """The scorer of ``codes`` (N, M), whose first rows are this scorer's codes (rows
        appended): the new rows' one-hot rows are written into the spare end of this scorer's
        matrix when it is the last one extended from it (amortized O(added), as
        :meth:`GatherADC.extended`); past the one-hot limit it gathers (``gather``: the new
        codes' gather, when the caller has it). This scorer is left as it is."""
        n, total = len(self.codes), len(codes)
        if total < n:
            raise ValueError(f"cannot extend a scorer of {n} items to {total}")
        width = codes.shape[1] * self.num_codewords
        if self.onehot is None or total * width * 4 > self.max_onehot_bytes:
            return ADCScorer(codes, self.num_codewords, self.max_onehot_bytes, gather)
        grown = ADCScorer(codes[:0], self.num_codewords, self.max_onehot_bytes)
        spare = self._spare
        if spare is None or spare[1] != n or total > len(spare[0]):
            buffer = torch.empty(max(total + 1024, int(total * 1.25)), width)
            buffer[:n] = self.onehot
            spare = [buffer, n]
        buffer = spare[0]
        buffer[n:total] = _one_hot_rows(codes[n:], self.num_codewords)
        spare[1] = total
        grown.codes, grown.onehot, grown._spare = codes, buffer[:total], spare
        return grown

    def nbytes(self) -> int:
        """Memory of the per-codes state (one-hot matrix or gather keys)."""
        if self.onehot is not None:
            return self.onehot.numel() * self.onehot.element_size()
        return self.gather.nbytes() if self.gather is not None else 0

    def __call__(self, tables: Tensor, out: Tensor | None = None) -> Tensor:
        """Distances (Q, N) from look-up tables (Q, M, K).

        ``out``: a float32 buffer of at least Q rows to write into (its first Q rows are
        returned). Reusing one buffer across query chunks saves allocating, and the kernel
        zero-filling, a fresh (Q, N) matrix each time: about a third of the product's time at
        60,000 items.
        """
        if self.onehot is None:
            assert self.gather is not None
            return self.gather(tables, out)
        flat = tables.reshape(len(tables), -1)
        if out is None:
            return flat @ self.onehot.T
        return torch.mm(flat, self.onehot.T, out=out[: len(flat)])


def _one_hot_rows(codes: Tensor, num_codewords: int) -> Tensor:
    """float32 (N, M*K): row n has a 1 at m*K + codes[n, m] for every book m."""
    n, m = codes.shape
    flat = codes.long() + torch.arange(m, device=codes.device) * num_codewords
    onehot = torch.zeros(n, m * num_codewords, device=codes.device)
    return onehot.scatter_(1, flat, 1.0)


def squared_l2_distances(queries: Tensor, database: Tensor) -> Tensor:
    """Exact squared Euclidean distances (Q, N) between float vectors, via one matmul."""
    q, x = queries.float(), database.float()
    d = q.pow(2).sum(1, keepdim=True) - 2 * q @ x.T + x.pow(2).sum(1).unsqueeze(0)
    return d.clamp_min_(0)


# Query chunks up to this size are scored by gathering table entries (cheapest for a few
# queries: 0.3 ms for one query against 60,000 codes, 5 ms against 1,000,000, where the one-hot
# product reads its whole matrix); larger chunks use the one-hot product where it fits in memory
# (4x faster at 256 queries).
SMALL_BATCH = 8

# Distances held at once by a search (256 MB of float32): several queries per chunk even at
# 10 million items, where gathering a few queries together is about 1.5x faster per query
# than one at a time.
SEARCH_BUDGET = 2**26

# Items from which a chunk of queries that the exact path would score by gathering takes the
# certified 4-bit scan instead (:mod:`quantrieve.pq.fastscan`, K = 16 only): the same top-k,
# faster from about this size on (one query, idle 2-core machine: 1.04 against 1.27 ms at
# 100,000 items, 1.05 against 0.88 ms at 50,000; benchmarks/results/fastscan/crossover.json).
FASTSCAN_MIN_ITEMS = 100_000

# Filtered searches: a filter that keeps fewer than this fraction of the items is searched by
# gathering over the kept rows alone (time proportional to them); a wider one, on codes that
# take the certified 4-bit scan, by that scan with the other items dropped from its candidates
# (benchmarks/fastscan.py, filters).
FILTER_SCAN_MIN_FRACTION = 0.05


class CodeSearcher:
    """Exact top-k ADC search over a fixed set of codes, with its per-codes state built once.

    A service answers many small searches against the same codes: the gather keys of
    :class:`GatherADC` and the one-hot matrix of :class:`ADCScorer` are built on first use and
    kept, so a search costs a table, a gather or product, and a top-k. Chunks of at most
    :data:`SMALL_BATCH` queries, and every chunk when the one-hot matrix does not fit (about
    500,000 items at M = 8, K = 16), gather; larger chunks use the one-hot product. The two
    differ at most in the last bits of a float32 distance (summation order); a given batch of
    queries always takes the same path, so a search repeated with the same queries returns the
    same result.

    With ``fastscan`` (the default), 4-bit codes (K = 16) of at least
    :data:`FASTSCAN_MIN_ITEMS` items are searched, wherever the exact path would gather, by the
    certified 4-bit scan of :class:`~quantrieve.pq.fastscan.FastScan`: candidates from faiss's
    FastScan, re-scored by the gather's own arithmetic, and a bound on the 8-bit rounding
    proving no other item can enter the top-k. The result is the exact path's, bit for bit.

    Args:
        codebooks: (M, K, d).
        codes: uint8 (N, M).
        fastscan: allow the certified 4-bit scan where it applies.
    """

    def __init__(self, codebooks: Tensor, codes: Tensor, fastscan: bool = True) -> None:
        self.codebooks = codebooks
        self.codes = codes
        self._gather: GatherADC | None = None
        self._scorer: ADCScorer | None = None
        self._fastscan_allowed = fastscan
        num_items, num_books = codes.shape
        self.fastscan = (
            fastscan
            and num_items >= FASTSCAN_MIN_ITEMS
            and fastscan_supported(num_books, codebooks.shape[1], num_items)
        )
        self._fast: FastScan | None = None

    def _gathers(self, num_queries: int) -> bool:
        """Whether :meth:`distances` scores a chunk of ``num_queries`` by gathering."""
        num_items, num_books = self.codes.shape
        onehot = num_items * num_books * self.codebooks.shape[1] * 4
        return num_queries <= SMALL_BATCH or onehot > MAX_ONEHOT_BYTES

    def _gatherer(self) -> GatherADC:
        if self._gather is None:
            self._gather = GatherADC(self.codes, self.codebooks.shape[1])
        return self._gather

    def distances(self, tables: Tensor) -> Tensor:
        """Distances (Q, N) from look-up tables (Q, M, K), by the path the chunk size picks."""
        if len(tables) <= SMALL_BATCH:
            return self._gatherer()(tables)
        return self._batch_scorer()(tables)

    def _batch_scorer(self) -> ADCScorer:
        """The scorer of larger chunks: the one-hot product where it fits, else the gather
        (one set of gather columns, shared by both paths)."""
        if self._scorer is None:
            num_items, num_books = self.codes.shape
            fits = num_items * num_books * self.codebooks.shape[1] * 4 <= MAX_ONEHOT_BYTES
            shared = None if fits else self._gatherer()
            self._scorer = ADCScorer(self.codes, self.codebooks.shape[1], gather=shared)
        return self._scorer

    def prepare(self) -> CodeSearcher:
        """Build the per-codes state now (e.g. before a new index version takes searches),
        without scoring anything."""
        self._gatherer()
        self._batch_scorer()
        if self.fastscan:
            self._fastscan()
        return self

    def _fastscan(self) -> FastScan:
        if self._fast is None:
            self._fast = FastScan(self.codes)
        return self._fast

    def extended(self, codes: Tensor) -> CodeSearcher:
        """A searcher of ``codes`` (N, M) whose first rows are this searcher's codes (rows
        appended, as a live index grows): the gather columns, the one-hot matrix and the
        certified scan's packed codes built so far are extended by the new rows instead of
        rebuilt, at the cost of the new rows, amortized (an add to 10M items packs its items,
        not 10M). This searcher is left as it is (a version still being searched)."""
        if codes.shape[1] != self.codes.shape[1] or len(codes) < len(self.codes):
            raise ValueError(f"codes {tuple(codes.shape)} do not extend {tuple(self.codes.shape)}")
        grown = CodeSearcher(self.codebooks, codes, fastscan=self._fastscan_allowed)
        if self._gather is not None:
            grown._gather = self._gather.extended(codes)
        if self._scorer is not None:
            grown._scorer = self._scorer.extended(codes, grown._gather)
        if self._fast is not None and grown.fastscan:
            grown._fast = self._fast.extended(codes)
        return grown

    def nbytes(self) -> int:
        """Memory of the per-codes state built so far, besides the codes themselves."""
        gather = self._gather.nbytes() if self._gather is not None else 0
        scorer = self._scorer.nbytes() if self._scorer is not None else 0
        shared = self._scorer is not None and self._scorer.gather is self._gather
        fast = self._fast.nbytes() if self._fast is not None else 0
        return scorer + (0 if shared else gather) + fast

    def search(
        self,
        queries: Tensor,
        k: int,
        distance: str = "l2",
        rows: Tensor | RowFilter | None = None,
        hidden: HiddenRows | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Top-k coded items for each query: (distances, indices), both (Q, min(k, N)).

        ``rows``: int64, ascending, distinct (or a :meth:`row_filter` of them, kept for
        repeated searches): search only among these items, with at most ``len(rows)``
        results. A filtered search is exact: its results are the gather path's distances with
        every other item left out, in the same (distance, row) order.

        ``hidden``: rows to skip (deleted, not dropped yet: :class:`HiddenRows`), with at most
        N minus their count results; the result is the search of the other rows, exact. Not
        with ``rows`` (a filter's rows leave the hidden ones out themselves).
        """
        if rows is not None:
            if hidden is not None and hidden.count:
                raise ValueError("a filter's rows leave hidden rows out: pass one or the other")
            return self._search_rows(queries, k, distance, rows)
        if hidden is not None and hidden.count == 0:
            hidden = None
        if len(self.codes) == 0:
            empty = torch.zeros(len(queries), 0)
            return empty, empty.long()
        if hidden is not None:
            k = min(k, len(self.codes) - hidden.count)
        out_d, out_i = [], []
        skipped = None
        for chunk in query_chunks(len(queries), len(self.codes), SEARCH_BUDGET):
            tables = lookup_tables(queries[chunk], self.codebooks, distance)
            if self.fastscan and self._gathers(len(tables)):
                gather = self._gatherer()
                found = self._fastscan().search(tables, k, gather.rows, gather, skip=hidden)
                d, i = found.distances, found.indices
            else:
                dist = self.distances(tables)
                if hidden is not None:
                    skipped = hidden.mask() if skipped is None else skipped
                    dist.masked_fill_(skipped, float("inf"))
                d, i = topk_smallest(dist, k)
            out_d.append(d)
            out_i.append(i)
        if not out_d:
            return torch.zeros(0, min(k, len(self.codes))), torch.zeros(0, 0, dtype=torch.long)
        return torch.cat(out_d), torch.cat(out_i)

    def row_filter(self, rows: Tensor) -> RowFilter:
        """A filter of these codes keeping ``rows`` (int64, ascending, distinct), with the
        state its searches need built once: pass it to :meth:`search` again and again."""
        return RowFilter(self, rows)

    def _search_rows(
        self, queries: Tensor, k: int, distance: str, rows: Tensor | RowFilter
    ) -> tuple[Tensor, Tensor]:
        """A filtered search (see :meth:`search`): the certified scan with the other items
        masked out when the filter keeps a large share of fast-scannable codes, otherwise a
        gather over the kept rows alone."""
        kept = rows if isinstance(rows, RowFilter) else self.row_filter(rows)
        if kept.searcher is not self:
            raise ValueError("this filter was made for other codes")
        k = min(k, len(kept.rows))
        if k == 0 or len(queries) == 0:
            return torch.zeros(len(queries), k), torch.zeros(len(queries), k, dtype=torch.long)
        out_d, out_i = [], []
        # Chunked as an unfiltered search of these codes: a query's look-up table (a batched
        # product) can differ in its last bits with the chunk it is computed in.
        for chunk in query_chunks(len(queries), len(self.codes), SEARCH_BUDGET):
            tables = lookup_tables(queries[chunk], self.codebooks, distance)
            if kept.scan:
                gather = self._gatherer()
                fast = self._fastscan()
                found = fast.search(tables, k, gather.rows, gather, kept.allowed(), len(kept.rows))
                d, i = found.distances, found.indices
            else:
                d, cols = topk_smallest(kept.subset()(tables), k)
                i = kept.rows[cols]
            out_d.append(d)
            out_i.append(i)
        return torch.cat(out_d), torch.cat(out_i)


class RowFilter:
    """The rows a filtered search of one :class:`CodeSearcher` may return, and what searching
    them takes: for a filter keeping at least :data:`FILTER_SCAN_MIN_FRACTION` of codes the
    certified scan handles, a mask of the items (the scan drops the others from its
    candidates); otherwise the gather columns of the kept rows alone. Built on first use."""

    def __init__(self, searcher: CodeSearcher, rows: Tensor) -> None:
        num_items = len(searcher.codes)
        rows = rows.long()
        if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= num_items):
            raise IndexError(f"filter rows must lie in [0, {num_items})")
        self.searcher = searcher
        self.rows = rows
        self.scan = searcher.fastscan and len(rows) >= FILTER_SCAN_MIN_FRACTION * num_items
        self._allowed: Tensor | None = None
        self._subset: GatherADC | None = None

    def allowed(self) -> Tensor:
        """bool (N,): whether each item passes."""
        if self._allowed is None:
            self._allowed = torch.zeros(len(self.searcher.codes), dtype=torch.bool)
            self._allowed[self.rows] = True
        return self._allowed

    def subset(self) -> GatherADC:
        """The gather over the kept rows alone (columns in the order of :attr:`rows`)."""
        if self._subset is None:
            codes = self.searcher.codes.index_select(0, self.rows)
            self._subset = GatherADC(codes, self.searcher.codebooks.shape[1])
        return self._subset


def search_codes(
    queries: Tensor,
    codebooks: Tensor,
    codes: Tensor,
    k: int,
    distance: str = "l2",
) -> tuple[Tensor, Tensor]:
    """Top-k coded items for each query by ADC: returns (distances, indices), both (Q, k).

    One-off: :class:`CodeSearcher` keeps its state for repeated searches of the same codes."""
    return CodeSearcher(codebooks, codes).search(queries, k, distance)
