"""Filtered search: only items with given labels or an id prefix, exact on both paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import quantrieve.pq.adc as adc_module
from quantrieve.errors import QuantrieveError
from quantrieve.index.pq_index import PQIndex
from quantrieve.pq import lookup_tables
from quantrieve.pq.adc import CodeSearcher, GatherADC
from quantrieve.pq.ranking import topk_smallest

M, K, D = 4, 16, 4


def _reference(books, codes, queries, k, distance, rows):
    """The gather path's distances with every other item at infinity, ranked."""
    tables = lookup_tables(queries, books, distance)
    dist = GatherADC(codes, K)(tables)
    mask = torch.ones(len(codes), dtype=torch.bool)
    mask[rows] = False
    dist = dist.masked_fill(mask, float("inf"))
    d, i = topk_smallest(dist, min(k, len(rows)))
    return d, i


def _codes(n: int, seed: int, ties: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    high = 2 if ties else K  # two codewords per book: many items share a code
    return torch.randint(0, high, (n, M), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("distance", ["l2", "sqeuclidean"])
@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("share", [0.01, 0.3, 0.9])
def test_filtered_search_is_the_exact_search_restricted(
    monkeypatch: pytest.MonkeyPatch, distance: str, fast: bool, ties: bool, share: float
) -> None:
    monkeypatch.setattr(adc_module, "FASTSCAN_MIN_ITEMS", 0)
    g = torch.Generator().manual_seed(7)
    books = torch.randn(M, K, D, generator=g)
    codes = _codes(3000, 1, ties)
    queries = torch.randn(5, M * D, generator=g)
    keep = torch.rand(len(codes), generator=g) < share
    rows = keep.nonzero().squeeze(1)
    searcher = CodeSearcher(books, codes, fastscan=fast)
    assert searcher.fastscan is fast
    for k in (1, 10, 37, 1000):
        d, i = searcher.search(queries, k, distance, rows)
        ref_d, ref_i = _reference(books, codes, queries, k, distance, rows)
        assert torch.equal(i, ref_i), (k, share)
        assert torch.equal(d, ref_d)
        assert bool(keep[i].all())


def test_fast_path_with_a_wide_filter_scans_instead_of_gathering(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A wide filter on fast-scannable codes goes through the 4-bit scan, a narrow one does
    not (and both give the restricted exact ranking, tested above)."""
    monkeypatch.setattr(adc_module, "FASTSCAN_MIN_ITEMS", 0)
    calls: list[int] = []
    original = adc_module.FastScan.search

    def spy(self, tables, k, rescore, exact, allowed=None, allowed_count=None):
        calls.append(int(allowed.sum()))
        assert allowed_count == calls[-1]
        return original(self, tables, k, rescore, exact, allowed, allowed_count)

    monkeypatch.setattr(adc_module.FastScan, "search", spy)
    g = torch.Generator().manual_seed(3)
    books = torch.randn(M, K, D, generator=g)
    codes = _codes(2000, 2, False)
    searcher = CodeSearcher(books, codes)
    queries = torch.randn(2, M * D, generator=g)
    searcher.search(queries, 5, "l2", torch.arange(0, 2000, 2))
    assert calls == [1000]
    searcher.search(queries, 5, "l2", torch.arange(0, 2000, 100))  # 1 % of the items
    assert calls == [1000]


def test_empty_filter_and_filter_smaller_than_k() -> None:
    g = torch.Generator().manual_seed(0)
    books = torch.randn(M, K, D, generator=g)
    codes = _codes(100, 3, False)
    searcher = CodeSearcher(books, codes)
    queries = torch.randn(3, M * D, generator=g)
    d, i = searcher.search(queries, 10, "l2", torch.zeros(0, dtype=torch.long))
    assert d.shape == i.shape == (3, 0)
    d, i = searcher.search(queries, 10, "l2", torch.tensor([5, 50, 99]))
    assert i.shape == (3, 3)
    assert sorted(i[0].tolist()) == [5, 50, 99]
    with pytest.raises(IndexError):
        searcher.search(queries, 10, "l2", torch.tensor([100]))


def _index(refine: bool = False) -> PQIndex:
    rng = np.random.default_rng(0)
    n = 400
    labels = np.zeros((n, 3), dtype=bool)
    labels[np.arange(n), rng.integers(0, 3, n)] = True
    labels[::7, 0] = True  # some items carry two labels
    ids = [f"{'2024' if i % 4 else '2023'}/img{i:04d}.png" for i in range(n)]
    return PQIndex(
        codebooks=rng.normal(size=(M, K, D)).astype(np.float32),
        codes=rng.integers(0, K, (n, M)).astype(np.uint8),
        ids=ids,
        labels=labels,
        class_names=["cat", "dog", "owl"],
        refine=rng.normal(size=(n, M * D)).astype(np.float16) if refine else None,
        refine_depth=50,
    )


def test_filter_rows_by_labels_and_prefix() -> None:
    index = _index()
    owl = index.filter_rows(labels=["owl"])
    assert np.array_equal(owl, np.flatnonzero(index.labels[:, 2]))
    either = index.filter_rows(labels=["dog", "owl"])
    assert np.array_equal(either, np.flatnonzero(index.labels[:, 1] | index.labels[:, 2]))
    old = index.filter_rows(id_prefix="2023/")
    assert np.array_equal(old, np.arange(0, 400, 4))
    both = index.filter_rows(labels=["cat"], id_prefix="2023/")
    assert np.array_equal(both, np.intersect1d(old, np.flatnonzero(index.labels[:, 0])))
    assert index.filter_rows() is None
    assert len(index.filter_rows(id_prefix="1999/")) == 0
    with pytest.raises(QuantrieveError, match="cat, dog, owl"):
        index.filter_rows(labels=["cow"])
    unlabelled = PQIndex(index.codebooks, index.codes, index.ids)
    with pytest.raises(QuantrieveError, match="no class labels"):
        unlabelled.filter_rows(labels=["cat"])


@pytest.mark.parametrize("refine", [False, True])
def test_index_search_with_a_filter_returns_only_passing_items_in_order(refine: bool) -> None:
    index = _index(refine)
    rng = np.random.default_rng(1)
    queries = torch.from_numpy(rng.normal(size=(4, M * D)).astype(np.float32))
    rows = index.filter_rows(labels=["dog"], id_prefix="2024/")
    _, found = index.search(queries, 20, rows=rows)
    assert np.isin(found.numpy(), rows).all()
    # The same ranking as searching an index of the passing rows alone.
    keep = np.zeros(len(index), dtype=bool)
    keep[rows] = True
    alone = index.with_rows(index.codes, index.ids, index.labels, None, index.refine, keep)
    _, sub = alone.search(queries, 20)
    assert np.array_equal(rows[sub.numpy()], found.numpy())


def test_copies_first_respects_the_filter() -> None:
    index = _index()
    index.content = np.arange(len(index), dtype=np.uint64) % 50  # copies every 50 rows
    query = torch.zeros(1, M * D)
    rows = index.filter_rows(id_prefix="2023/")  # rows 0, 4, 8, ...
    _, found = index.search(query, 5, fingerprints=np.array([0], np.uint64), rows=rows)
    # Copies of fingerprint 0 are rows 0, 50, 100, ...; of those, 0, 100, 200, 300 pass.
    assert found[0, :4].tolist() == [0, 100, 200, 300]
    assert np.isin(found.numpy(), rows).all()


def test_a_repeated_filter_is_one_array_with_its_search_state_built_once() -> None:
    index = _index()
    rows = index.filter_rows(labels=["dog"])
    assert index.filter_rows(labels=["dog"]) is rows and not rows.flags.writeable
    queries = torch.zeros(2, M * D)
    index.search(queries, 5, rows=rows)
    index.search(queries, 5, rows=index.filter_rows(labels=["dog"]))
    assert len(index.searcher().__dict__["_row_filters"]) == 1
    # A change of the rows makes new filters: the added item passes.
    index.add(index.codes[:1], ["2024/new.png"], index.labels[rows[:1]])
    grown = index.filter_rows(labels=["dog"])
    assert grown is not rows and grown[-1] == len(index) - 1
