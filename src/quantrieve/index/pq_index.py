"""The PQ index in memory: codes, codebooks, ids, labels, and search over them.

:class:`PQIndex` holds the arrays and searches them (ADC, optional refinement, exact copies
first). It keeps no file format of its own: :meth:`PQIndex.save` and :meth:`PQIndex.load` hand
the arrays to the directory reader and writer (:mod:`quantrieve.index.directory`) and to the
segment files (:mod:`quantrieve.index.segment_files`), which sit below this module; the live
versions, the writer and compaction sit above it.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from quantrieve.errors import QuantrieveError
from quantrieve.index.columns import GrowingIds, append_ids, append_rows
from quantrieve.index.directory import SavableModel, read_base, save_index, write_base
from quantrieve.index.format import RESERVED_META, IndexFormatError
from quantrieve.index.segment_files import StoredVersion, has_segments, read_version
from quantrieve.pq.bits import code_bits
from quantrieve.pq.numpy_search import (
    CHUNK_BUDGET,
    NumpyADC,
    lookup_tables_np,
    refine_ranking_np,
    topk_rows,
)
from quantrieve.pq.settings import DEFAULT_REFINE_DEPTH, DISTANCES, REFINE_SOURCES, tie_width

if TYPE_CHECKING:  # torch is imported where a search needs it: loading an index does not
    import torch

    from quantrieve.pq import CodeSearcher, HiddenRows, RowFilter


@functools.cache
def torch_installed() -> bool:
    """Whether torch imports (a query service may run without it: the search is then
    :meth:`PQIndex.search_numpy`). Asked at the first search, never at import."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class PQIndex:
    """PQ codes of a database with their codebooks, ids and optional labels.

    Attributes:
        codebooks: float32 (M, K, d).
        codes: uint8 (N, M).
        ids: N item ids.
        labels: bool (N, C) or None.
        distance: default ranking distance, ``l2`` or ``sqeuclidean``.
        content: uint64 (N,) pixel fingerprints (:func:`image_fingerprints`) or None.
        meta: free-form metadata saved in index.json (config, versions, source...).
        refine: float16 (N, D) finer vectors of the items, or None: a search re-scores its
            first ``refine_depth`` ADC results with them, and the rest of a tie group
            straddling place ``refine_depth`` (:mod:`quantrieve.pq.refine`).
        refine_depth: R, the re-scored results per query (used only with ``refine``).
        refine_expand: n > 0 re-scores the head once more against the mean of the query and
            its first n refined results (average query expansion,
            :func:`~quantrieve.pq.refine.refine_ranking`); 0: off.
        refine_source: what ``refine`` holds (:data:`~quantrieve.pq.settings.REFINE_SOURCES`):
            ``embedding``, the embeddings f (D = M*d) the codes quantize, re-scored against the
            query's embedding; ``backbone``, the unit-length backbone representations (D = the
            backbone's width), re-scored against the query's (``refine_queries`` of
            :meth:`search`).
        items: int64 (N,) the stable item number of each row (:mod:`quantrieve.index.hits`),
            or None when row i is item i (a freshly encoded index). An index loaded with its
            service changes gets them from the manifest.
        deleted_at: int32 (N,) or None: in a live index (:mod:`quantrieve.index.writer`), the
            generation that deleted each row not dropped yet (0: not deleted). Rows with
            ``0 < deleted_at <= generation`` are hidden: searches, filters and copies skip
            them (:mod:`quantrieve.pq.hidden`); ``len`` still counts them (rows are positions).
        generation: the live version this index is.
        num_hidden: how many rows are hidden.
    """

    codebooks: np.ndarray
    codes: np.ndarray
    ids: Sequence[str]
    labels: np.ndarray | None = None
    distance: str = "l2"
    class_names: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    content: np.ndarray | None = None
    refine: np.ndarray | None = None
    refine_depth: int = DEFAULT_REFINE_DEPTH
    refine_source: str = "embedding"
    refine_expand: int = 0
    items: np.ndarray | None = None
    deleted_at: np.ndarray | None = None
    generation: int = 0
    num_hidden: int = 0
    #: How many leading rows are already known to be valid (codewords < K, ids without line
    #: breaks): a new version of an index that appends rows checks only the new rows, so an add
    #: costs no scan of every item.
    rows_checked: InitVar[int] = 0

    def __post_init__(self, rows_checked: int) -> None:
        if self.content is not None:
            self.content = np.asarray(self.content, dtype=np.uint64)
            if self.content.shape != (len(self.codes),):
                raise IndexFormatError(
                    f"content fingerprints must be ({len(self.codes)},), got {self.content.shape}"
                )
        self.codebooks = np.ascontiguousarray(self.codebooks, dtype=np.float32)
        self.codes = np.ascontiguousarray(self.codes, dtype=np.uint8)
        if self.codebooks.ndim != 3:
            raise IndexFormatError(f"codebooks must be (M, K, d), got {self.codebooks.shape}")
        m, k, _ = self.codebooks.shape
        if self.codes.ndim != 2 or self.codes.shape[1] != m:
            raise IndexFormatError(f"codes must be (N, {m}), got {self.codes.shape}")
        unchecked = self.codes[rows_checked:]
        if len(unchecked) and int(unchecked.max()) >= k:
            raise IndexFormatError(f"codes hold codeword {int(unchecked.max())} >= K = {k}")
        if len(self.ids) != len(self.codes):
            raise IndexFormatError(f"{len(self.ids)} ids for {len(self.codes)} codes")
        if self.labels is not None and len(self.labels) != len(self.codes):
            raise IndexFormatError(f"{len(self.labels)} label rows for {len(self.codes)} codes")
        if self.class_names and (
            self.labels is None or len(self.class_names) != self.labels.shape[1]
        ):
            columns = "no labels" if self.labels is None else f"{self.labels.shape[1]} columns"
            raise IndexFormatError(f"{len(self.class_names)} class names for {columns} of labels")
        if self.distance not in DISTANCES:
            raise IndexFormatError(f"distance must be one of {DISTANCES}, got '{self.distance}'")
        if self.refine is not None:
            if not isinstance(self.refine, np.memmap):
                self.refine = np.asarray(self.refine, dtype=np.float16)
            dim = self.codebooks.shape[0] * self.codebooks.shape[2]
            if self.refine_source == "backbone" and self.refine.ndim == 2:
                dim = self.refine.shape[1]  # the backbone's width, any
            if self.refine.dtype != np.float16 or self.refine.shape != (len(self.codes), dim):
                raise IndexFormatError(
                    f"refine vectors must be float16 ({len(self.codes)}, {dim}), got "
                    f"{self.refine.dtype} {self.refine.shape}"
                )
        if self.refine_source not in REFINE_SOURCES:
            raise IndexFormatError(
                f"refine_source must be one of {REFINE_SOURCES}, got '{self.refine_source}'"
            )
        if self.items is not None:
            self.items = np.asarray(self.items, dtype=np.int64)
            if self.items.shape != (len(self.codes),):
                raise IndexFormatError(
                    f"item numbers must be ({len(self.codes)},), got {self.items.shape}"
                )
        if self.refine_depth < 1:
            raise IndexFormatError(f"refine_depth must be >= 1, got {self.refine_depth}")
        if self.refine_expand < 0:
            raise IndexFormatError(f"refine_expand must be >= 0, got {self.refine_expand}")
        if self.deleted_at is not None and self.deleted_at.shape != (len(self.codes),):
            raise IndexFormatError(
                f"deletion stamps must be ({len(self.codes)},), got {self.deleted_at.shape}"
            )
        if self.num_hidden and self.deleted_at is None:
            raise IndexFormatError(f"{self.num_hidden} hidden rows without deletion stamps")
        # one C-speed scan, not a Python loop over the items
        joined = "".join(self.ids[rows_checked:] if rows_checked else self.ids)
        if "\n" in joined or "\r" in joined:
            raise IndexFormatError("item ids may not contain line breaks")
        clash = RESERVED_META & set(self.meta)
        if clash:
            raise IndexFormatError(f"metadata keys {sorted(clash)} are reserved by the format")

    @property
    def num_books(self) -> int:
        return self.codebooks.shape[0]

    @property
    def num_codewords(self) -> int:
        return self.codebooks.shape[1]

    @property
    def bits(self) -> int:
        return code_bits(self.num_books, self.num_codewords)

    def __len__(self) -> int:
        return len(self.codes)

    def label_names(self, row: int) -> list[str]:
        """The class names of row ``row`` (empty when unlabelled or unnamed)."""
        if self.labels is None or not self.class_names:
            return []
        return [self.class_names[c] for c in np.flatnonzero(self.labels[row])]

    def item_numbers(self) -> np.ndarray:
        """int64 (N,): the stable item number of every row (row i is item i by default)."""
        if self.items is not None:
            return self.items
        return np.arange(len(self.codes), dtype=np.int64)

    def hidden(self) -> HiddenRows | None:
        """The rows searches skip (deleted, not dropped yet), or None."""
        import torch

        from quantrieve.pq import HiddenRows

        if not self.num_hidden or self.deleted_at is None:
            return None
        return HiddenRows(torch.from_numpy(self.deleted_at), self.generation, self.num_hidden)

    def hidden_mask(self) -> np.ndarray | None:
        """bool (N,): whether each row is hidden, or None when none is."""
        if not self.num_hidden or self.deleted_at is None:
            return None
        return (self.deleted_at > 0) & (self.deleted_at <= self.generation)

    def add(
        self,
        codes: np.ndarray,
        ids: Sequence[str],
        labels: np.ndarray | None = None,
        content: np.ndarray | None = None,
        refine: np.ndarray | None = None,
    ) -> None:
        """Append items in memory: codes uint8 (n, M), their ids and, for a labelled index,
        their labels in the index's class order; their pixel fingerprints and float16
        embeddings when the index keeps them. Checked like a new index."""
        codes = np.asarray(codes, dtype=np.uint8)
        if (labels is None) != (self.labels is None):
            raise IndexFormatError("labels must be given for a labelled index, and only for one")
        if (content is None) != (self.content is None):
            raise IndexFormatError(
                "content fingerprints must be given when the index keeps them, and only then"
            )
        if (refine is None) != (self.refine is None):
            raise IndexFormatError(
                "refine embeddings must be given when the index refines, and only then"
            )
        columns = self.appended_columns(codes, ids, labels, content, refine)
        grown = self.with_rows(*columns, rows_checked=len(self.codes))  # checks the new rows
        if self.items is not None:
            start = int(self.items.max()) + 1 if len(self.items) else 0
            new = np.arange(start, start + len(codes), dtype=np.int64)
            self.items = append_rows(self.items, new)
        grown.carry_hidden(self)
        self.deleted_at = grown.deleted_at
        grown.carry_search_state(self)
        state = grown.__dict__.get("_searcher")
        self.codes, self.ids, self.labels = grown.codes, grown.ids, grown.labels
        self.content, self.refine = grown.content, grown.refine
        if state is not None:
            self.__dict__["_searcher"] = state

    def appended_columns(
        self,
        codes: np.ndarray,
        ids: Sequence[str],
        labels: np.ndarray | None,
        content: np.ndarray | None,
        refine: np.ndarray | None,
    ) -> tuple[np.ndarray, GrowingIds, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """The rows of this index followed by the given ones, column by column, each grown
        at its end (:mod:`quantrieve.index.columns`: no copy of this index's rows, amortized).
        Whether the optional columns are given where this index has them is the caller's
        check."""
        return (
            append_rows(np.asarray(self.codes), np.asarray(codes, dtype=np.uint8)),
            append_ids(self.ids, ids),
            None if self.labels is None else append_rows(np.asarray(self.labels), labels),
            None if self.content is None else append_rows(self.content, content),
            None if self.refine is None else append_rows(np.asarray(self.refine), refine),
        )

    def search(
        self,
        queries: torch.Tensor | np.ndarray,
        k: int = 10,
        distance: str | None = None,
        refine_depth: int | None = None,
        fingerprints: np.ndarray | None = None,
        rows: np.ndarray | None = None,
        refine_queries: torch.Tensor | np.ndarray | None = None,
        refine_expand: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k items per query embedding (Q, M*d) by ADC: (distances, indices), each (Q, k).

        The search state (per-book code columns, the one-hot matrix) is built on the first search
        and kept with these codes (:meth:`searcher`), so repeated searches cost a look-up table, a
        gather or product and a top-k. With 16 codewords per book and at least
        :data:`~quantrieve.pq.adc.FASTSCAN_MIN_ITEMS` items, the gathers give way to the
        certified 4-bit scan (:mod:`quantrieve.pq.fastscan`): the same results, bit for bit.

        An index that refines (:attr:`refine`) re-scores the first ``refine_depth`` results
        (default: the index's), and the rest of a tie group straddling that place (up to
        ``TIE_SPAN`` times as many), with the items' float16 vectors and orders them by that
        distance, ties by item number; later results keep their ADC order and distances
        (:func:`~quantrieve.pq.refine_ranking`). ``refine_depth=0`` searches by ADC alone.
        ``refine_queries``: the queries' vectors in the space of :attr:`refine`, needed when
        it is not the embeddings' (``refine_source="backbone"``: the queries' unit backbone
        representations, :meth:`~quantrieve.models.retrieval.RetrievalModel.embed_with_backbone`).
        ``refine_expand`` (default: the index's :attr:`refine_expand`): n > 0 re-scores the
        head once more against the mean of each query and its first n refined results.

        ``fingerprints``: the queries' pixel fingerprints (:func:`image_fingerprints`), for an
        index that keeps them: the items with a query's very pixels come first, at distance 0,
        in item order; the rest follow in their order.

        ``rows``: search only among these rows (a filter, from :meth:`filter_rows`); at most
        ``len(rows)`` results, exact (:meth:`~quantrieve.pq.CodeSearcher.search`), refined and
        with copies first like any search.

        Without torch installed, this is :meth:`search_numpy` (numpy arrays out).
        """
        if not torch_installed():
            return self.search_numpy(
                queries,
                k,
                distance,
                refine_depth,
                fingerprints,
                rows,
                refine_queries,
                refine_expand,
            )
        import torch

        from quantrieve.pq import refine_ranking

        queries = torch.as_tensor(queries)
        distance = distance or self.distance
        depth = self.refine_depth if refine_depth is None else refine_depth
        if depth < 0:
            raise QuantrieveError(f"refine depth must be >= 0 (0 = off), got {depth}")
        expand = self.query_expansion(refine_expand)
        kept = None if rows is None else self._row_filter(rows)
        hidden = None if rows is not None else self.hidden()  # a filter leaves them out
        if self.refine is None or depth == 0:
            dists, items = self.searcher().search(queries, k, distance, kept, hidden)
        else:
            against = torch.as_tensor(self.refine_vectors_of(queries, refine_queries))
            with warnings.catch_warnings():  # a read-only memory map is only ever read here
                warnings.simplefilter("ignore", UserWarning)
                fine = torch.from_numpy(self.refine)
            # R's tie group may go on past place R: the ranking is fetched TIE_SPAN * R wide
            # (as fast as R wide: one scan, a wider top-k) and the head takes it in.
            wanted = tie_width(depth, k)
            dists, items = self.searcher().search(queries, wanted, distance, kept, hidden)
            dists, items = refine_ranking(against, dists, items, fine, depth, distance, expand)
            dists, items = dists[:, :k], items[:, :k]
        if fingerprints is not None and self.content is not None:
            prints = np.asarray(fingerprints, np.uint64)
            d, i = self._copies_first(dists.numpy(), items.numpy(), prints, rows)
            dists, items = torch.from_numpy(d), torch.from_numpy(i)
        return dists, items

    def search_numpy(
        self,
        queries: np.ndarray,
        k: int = 10,
        distance: str | None = None,
        refine_depth: int | None = None,
        fingerprints: np.ndarray | None = None,
        rows: np.ndarray | None = None,
        refine_queries: np.ndarray | None = None,
        refine_expand: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` with numpy alone (:mod:`quantrieve.pq.numpy_search`): the same
        arguments and rules (ADC, refinement, copies first, filter, hidden rows), float32
        distances and int64 rows as numpy arrays. What :meth:`search` does without torch."""
        queries = np.asarray(queries, dtype=np.float32)
        distance = distance or self.distance
        depth = self.refine_depth if refine_depth is None else refine_depth
        if depth < 0:
            raise QuantrieveError(f"refine depth must be >= 0 (0 = off), got {depth}")
        expand = self.query_expansion(refine_expand)
        refining = self.refine is not None and depth > 0
        against = None
        if refining:
            against = np.asarray(self.refine_vectors_of(queries, refine_queries), np.float32)
        wanted = tie_width(depth, k) if refining else k  # R's tie group, as search fetches it
        scorer = self._numpy_adc()
        hidden = None if rows is not None else self.hidden_mask()
        step = max(1, CHUNK_BUDGET // max(1, len(self.codes)))
        out_d, out_i = [], []
        for start in range(0, len(queries), step):
            chunk = queries[start : start + step]
            tables = lookup_tables_np(chunk, self.codebooks, distance)
            if rows is not None:
                dist = scorer.distances(tables, rows)
                d, cols = topk_rows(dist, wanted)
                i = np.asarray(rows, dtype=np.int64)[cols]
            else:
                dist = scorer.distances(tables)
                if hidden is not None:
                    dist[:, hidden] = np.inf
                d, i = topk_rows(dist, wanted)
            if against is not None:
                fine_q = against[start : start + step]
                d, i = refine_ranking_np(fine_q, d, i, self.refine, depth, distance, expand)
            out_d.append(d[:, :k])
            out_i.append(i[:, :k])
        width = min(k, len(self.codes) if rows is None else len(rows))
        dists = np.concatenate(out_d) if out_d else np.zeros((0, width), np.float32)
        items = np.concatenate(out_i) if out_i else np.zeros((0, width), np.int64)
        if fingerprints is not None and self.content is not None:
            prints = np.asarray(fingerprints, np.uint64)
            dists, items = self._copies_first(dists, items, prints, rows)
        return dists, items

    def query_expansion(self, refine_expand: int | None = None) -> int:
        """The query expansion of a search or an evaluation: its own ``refine_expand``, else
        the index's :attr:`refine_expand`; refused when negative."""
        expand = self.refine_expand if refine_expand is None else refine_expand
        if expand < 0:
            raise QuantrieveError(f"query expansion must be >= 0 (0 = off), got {expand}")
        return expand

    def refine_vectors_of(self, queries: Any, refine_queries: Any) -> Any:
        """The queries' vectors that :attr:`refine` is re-scored against: the embeddings
        themselves for ``refine_source="embedding"``, else ``refine_queries`` (required)."""
        if self.refine_source == "embedding":
            return queries if refine_queries is None else refine_queries
        if refine_queries is None:
            raise QuantrieveError(
                f"this index refines with {self.refine_source} vectors: the search needs the "
                "queries' own (refine_queries; Retriever.search and the service compute them "
                "from the query images)"
            )
        assert self.refine is not None
        if len(refine_queries) != len(queries) or refine_queries.shape[1] != self.refine.shape[1]:
            raise QuantrieveError(
                f"refine_queries must be ({len(queries)}, {self.refine.shape[1]}), got "
                f"{tuple(refine_queries.shape)}"
            )
        return refine_queries

    def prepare_numpy(self) -> None:
        """Build :meth:`search_numpy`'s state now (before this version takes searches)."""
        self._numpy_adc()

    def _numpy_adc(self) -> NumpyADC:
        cached = self.__dict__.get("_numpy_state")
        if cached is None or cached[0] is not self.codes:
            cached = (self.codes, NumpyADC(self.codes, self.num_codewords))
            self.__dict__["_numpy_state"] = cached
        return cached[1]

    def _row_filter(self, rows: np.ndarray) -> RowFilter:
        """The searcher's filter of ``rows``; kept for read-only arrays (what
        :meth:`filter_rows` returns), so a repeated filter builds its search state once."""
        import torch

        searcher = self.searcher()
        if isinstance(rows, np.ndarray) and not rows.flags.writeable:
            cache = searcher.__dict__.setdefault("_row_filters", {})
            hit = cache.get(id(rows))
            if hit is not None and hit[0] is rows:
                return hit[1]
            made = searcher.row_filter(torch.from_numpy(rows.astype(np.int64, copy=False)))
            if len(cache) >= 16:
                cache.pop(next(iter(cache)))
            cache[id(rows)] = (rows, made)  # holding rows keeps its id from being reused
            return made
        return searcher.row_filter(torch.from_numpy(np.array(rows, dtype=np.int64)))

    def filter_rows(
        self, labels: Sequence[str] | None = None, id_prefix: str | None = None
    ) -> np.ndarray | None:
        """The rows a filtered search may return, ascending, read-only (None: no filter
        given). The same filter of the same rows is the same array (kept per index version,
        with its search state), so a service that repeats a filter pays for it once.

        ``labels``: class names; a row passes with any of them. ``id_prefix``: a row passes when
        its id starts with it (a sub-folder: ``"2024/"``). Both given: a row must pass both.

        Raises:
            QuantrieveError: a label filter on an unlabelled index, or a class name the index
                does not have (the message lists the ones it has).
        """
        if labels is None and id_prefix is None:
            return None
        key = (None if labels is None else tuple(labels), id_prefix)
        cached = self.__dict__.get("_filters")
        if (
            cached is None
            or cached[0] is not self.ids
            or cached[1] is not self.codes
            or cached[3] != (self.generation, self.num_hidden)
        ):
            cached = (self.ids, self.codes, {}, (self.generation, self.num_hidden))
            self.__dict__["_filters"] = cached
        filters: dict = cached[2]
        if key not in filters:
            if len(filters) >= 16:
                filters.pop(next(iter(filters)))
            found = self._filtered(labels, id_prefix)
            found.flags.writeable = False
            filters[key] = found
        return filters[key]

    def _filtered(self, labels: Sequence[str] | None, id_prefix: str | None) -> np.ndarray:
        keep = np.ones(len(self.codes), dtype=bool)
        if labels is not None:
            if self.labels is None or not self.class_names:
                raise QuantrieveError(
                    "this index has no class labels to filter by; filter by id prefix instead"
                )
            unknown = sorted(set(labels) - set(self.class_names))
            if unknown:
                raise QuantrieveError(
                    f"unknown label(s) {', '.join(map(repr, unknown))}; this index's labels: "
                    f"{', '.join(self.class_names)}"
                )
            columns = [self.class_names.index(name) for name in dict.fromkeys(labels)]
            keep &= np.asarray(self.labels)[:, columns].any(axis=1) if columns else False
        if id_prefix is not None:
            keep &= self._id_prefix_mask(id_prefix)
        hidden = self.hidden_mask()
        if hidden is not None:
            keep &= ~hidden
        return np.flatnonzero(keep).astype(np.int64)

    def _id_prefix_mask(self, prefix: str) -> np.ndarray:
        """bool (N,): whose id starts with ``prefix``."""
        found = (ident.startswith(prefix) for ident in self.ids)
        return np.fromiter(found, dtype=bool, count=len(self.ids))

    def copies(self, fingerprint: int) -> np.ndarray:
        """The rows whose pixel fingerprint is ``fingerprint``, ascending (none without
        fingerprints)."""
        if self.content is None:
            return np.zeros(0, dtype=np.int64)
        cached = self.__dict__.get("_content_order")
        if cached is None or cached[0] is not self.content:
            order = np.argsort(self.content, kind="stable")
            cached = (self.content, order, self.content[order])
            self.__dict__["_content_order"] = cached
        order, ordered = cached[1], cached[2]
        key = np.uint64(fingerprint)
        lo = np.searchsorted(ordered, key, side="left")
        hi = np.searchsorted(ordered, key, side="right")
        rows = np.sort(order[lo:hi]).astype(np.int64)
        if self.num_hidden and self.deleted_at is not None:
            stamps = self.deleted_at[rows]
            rows = rows[(stamps == 0) | (stamps > self.generation)]
        return rows

    def _copies_first(
        self,
        dists: np.ndarray,
        items: np.ndarray,
        fingerprints: np.ndarray,
        rows: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each query's exact copies (among ``rows`` when filtered) in front at distance 0, the
        rest after; length kept."""
        if len(fingerprints) != len(items):
            raise QuantrieveError(f"{len(fingerprints)} fingerprints for {len(items)} queries")
        dists, items = dists.copy(), items.copy()
        k = items.shape[1]
        for q, fingerprint in enumerate(fingerprints.tolist()):
            copies = self.copies(fingerprint)
            if rows is not None:
                copies = copies[np.isin(copies, rows)]
            copies = copies[:k]
            if not len(copies):
                continue
            rest = [(d, i) for d, i in zip(dists[q].tolist(), items[q].tolist(), strict=True)]
            taken = set(copies.tolist())
            row = [(0.0, int(i)) for i in copies] + [(d, i) for d, i in rest if i not in taken]
            dists[q] = [d for d, _ in row[:k]]
            items[q] = [i for _, i in row[:k]]
        return dists, items

    def carry_search_state(self, previous: PQIndex) -> None:
        """Start this index's search state from ``previous``'s, this index being ``previous``
        with rows appended (what an add makes): the state ``previous`` built is extended by the
        new rows, not rebuilt (:meth:`~quantrieve.pq.CodeSearcher.extended`). Nothing happens
        when ``previous`` has built none or the codes do not extend its codes."""
        cached = previous.__dict__.get("_searcher")
        if cached is None or cached[0] is not previous.codes:
            return
        old = len(previous.codes)
        if len(self.codes) < old or self.codebooks is not previous.codebooks:
            return
        if old and not np.array_equal(self.codes[old - 1], previous.codes[old - 1]):
            return  # not an append of rows
        import torch

        with warnings.catch_warnings():  # a read-only memory map is only ever read here
            warnings.simplefilter("ignore", UserWarning)
            grown = cached[2].extended(torch.from_numpy(self.codes))
        self.__dict__["_searcher"] = (self.codes, self.codebooks, grown)

    def searcher(self) -> CodeSearcher:
        """The :class:`~quantrieve.pq.CodeSearcher` of the current codes (built once, kept until
        :meth:`add` changes the codes)."""
        cached = self.__dict__.get("_searcher")
        if cached is not None and cached[0] is self.codes and cached[1] is self.codebooks:
            return cached[2]
        import torch

        from quantrieve.pq import CodeSearcher

        with warnings.catch_warnings():  # a read-only memory map is only ever read here
            warnings.simplefilter("ignore", UserWarning)
            searcher = CodeSearcher(torch.from_numpy(self.codebooks), torch.from_numpy(self.codes))
        self.__dict__["_searcher"] = (self.codes, self.codebooks, searcher)
        return searcher

    def with_rows(
        self,
        codes: np.ndarray,
        ids: Sequence[str],
        labels: np.ndarray | None,
        content: np.ndarray | None,
        refine: np.ndarray | None,
        keep: np.ndarray | None = None,
        rows_checked: int = 0,
    ) -> PQIndex:
        """A new index with this one's codebooks and settings and these rows (``keep``: a mask
        of the rows to take), checked like a new index. Its item numbers are unset.

        ``rows_checked``: how many leading rows are known to be valid (this index's own, when
        rows are appended), so only the others are scanned. A list of ids is taken as it is,
        not copied (indexes never change the ids a version sees)."""
        if keep is not None and not keep.all():
            # a subset of checked rows is checked
            rows_checked = int(keep.sum()) if rows_checked >= len(ids) else 0
            rows = np.flatnonzero(keep)
            codes = codes[rows]
            ids = _kept_ids(ids, keep)
            labels = None if labels is None else labels[rows]
            content = None if content is None else content[rows]
            refine = None if refine is None else refine[rows]
        return PQIndex(
            codebooks=self.codebooks,
            codes=codes,
            ids=ids if isinstance(ids, list | GrowingIds) else list(ids),
            labels=labels,
            distance=self.distance,
            class_names=list(self.class_names),
            meta=dict(self.meta),
            content=content,
            refine=refine,
            refine_depth=self.refine_depth,
            refine_source=self.refine_source,
            refine_expand=self.refine_expand,
            rows_checked=rows_checked,
        )

    def same_rows(self, **changes: Any) -> PQIndex:
        """A new version of this index with the same rows, item numbers and search state, and
        the given fields changed (``meta``, ``deleted_at``, ``generation``, ``num_hidden``).
        No row is copied or checked again."""
        fields = {
            "items": self.items,
            "deleted_at": self.deleted_at,
            "generation": self.generation,
            "num_hidden": self.num_hidden,
            **changes,
        }
        index = self.with_rows(
            np.asarray(self.codes),
            self.ids,
            self.labels,
            self.content,
            self.refine,
            rows_checked=len(self.codes),
        )
        meta = fields.pop("meta", None)
        if meta is not None:
            index.meta = meta
        for name, value in fields.items():
            setattr(index, name, value)
        index.__post_init__(len(self.codes))  # checks the changed fields, not the rows
        cached = self.__dict__.get("_searcher")
        if cached is not None and cached[0] is index.codes:
            index.__dict__["_searcher"] = cached
        return index

    def carry_hidden(self, previous: PQIndex) -> None:
        """This index being ``previous`` with rows appended: keep its hidden rows (the
        deletion stamps grown by the new, undeleted rows, at their end)."""
        self.num_hidden = previous.num_hidden
        self.generation = previous.generation
        if previous.deleted_at is not None:
            added = len(self.codes) - len(previous.codes)
            self.deleted_at = append_rows(previous.deleted_at, np.zeros(added, dtype=np.int32))

    def without_hidden(self) -> PQIndex:
        """This index with its hidden rows dropped (itself when it hides none)."""
        hidden = self.hidden_mask()
        if hidden is None:
            return self
        keep = ~hidden
        index = self.with_rows(
            np.asarray(self.codes),
            self.ids,
            self.labels,
            self.content,
            self.refine,
            keep,
            rows_checked=len(self.codes),
        )
        index.items = None if self.items is None else self.items[keep]
        index.generation = self.generation
        return index

    def with_version(self, version: StoredVersion) -> PQIndex:
        """This index, the base of a directory, as the stored ``version`` has it: the base rows,
        then the segments' rows, less the deleted ones, numbered by their item numbers. Without
        stored rows (no manifest) it is this very object, numbered."""
        rows = version.rows
        index = (
            self
            if rows is None
            else self.with_rows(
                rows.codes, rows.ids, rows.labels, rows.content, rows.refine, rows.keep
            )
        )
        index.items = np.asarray(version.keys, dtype=np.int64)
        if version.source_root is not None:  # the image folder moved after encoding
            source = {**(index.meta.get("source") or {}), "root": version.source_root}
            index.meta = {**index.meta, "source": source}
        return index

    def save(
        self,
        path: str | Path,
        model_file: str | Path | None = None,
        overwrite: bool = False,
        model: SavableModel | None = None,
    ) -> Path:
        """Write the index directory (:mod:`quantrieve.index.format`).

        The encoder goes in as ``model.pt``: copied from ``model_file``, or written by
        ``model.save`` (an in-memory model).

        A new or empty folder is written; an existing index is replaced only with
        ``overwrite``, whole (the new one is complete before the old one is removed); any
        other folder or file is refused (:class:`~quantrieve.errors.OutputError`).
        """
        return save_index(self.without_hidden(), path, model_file, overwrite, model)

    def write_files(
        self,
        folder: Path,
        model_file: str | Path | None = None,
        model: SavableModel | None = None,
    ) -> None:
        """Write the base files of the format into an existing, empty ``folder`` (no swap: see
        :meth:`save`, which calls this on a temporary folder)."""
        write_base(self.without_hidden(), folder, model_file, model)

    @classmethod
    def load(
        cls, path: str | Path, mmap: bool = False, verify: bool = True, segments: bool = True
    ) -> PQIndex:
        """Read an index directory; errors name the directory and the file or key at fault.

        An index changed by a search service (``segments/manifest.json``, see
        :mod:`quantrieve.index.segment_files`) loads as it stands now: the base items, then the
        items of every appended segment, less the deleted ones; ``quantrieve search`` and
        ``evaluate`` see what the service serves.

        Args:
            path: the index directory.
            mmap: memory-map codes and labels instead of reading them (an index with segments
                is merged into memory).
            verify: check codes.npy, ids.txt and labels.npy against their checksums in
                index.json, and each segment against the manifest (reads each file once; turn
                off for very large memory-mapped indexes). The cheap checks (M, K, d, bits, item
                count, codebook hash) always run.
            segments: apply the segments and deletions; False reads the base files alone.

        Raises:
            IndexFormatError: a missing or malformed file, a newer version, or an index altered
                since it was written (the message names the file or index.json key).
        """
        path = Path(path)
        base = read_base(path, mmap, verify, cls)
        if not segments or not has_segments(path):
            return base
        return base.with_version(read_version(path, base, verify))


def _kept_ids(ids: Sequence[str], keep: np.ndarray) -> list[str]:
    """The ids of the rows ``keep`` marks: a few dropped rows cut the list into slices (C-speed
    copies, a delete from millions of items), many are picked one by one."""
    dropped = np.flatnonzero(~keep)
    if len(dropped) * 64 > len(keep):
        return [ids[r] for r in np.flatnonzero(keep).tolist()]
    if len(dropped) <= 16:  # one copy, then a few moves within it
        kept = list(ids)
        for row in reversed(dropped.tolist()):
            del kept[row]
        return kept
    kept = []
    start = 0
    for row in dropped.tolist():
        kept += ids[start:row]
        start = row + 1
    kept += ids[start:]
    return kept
