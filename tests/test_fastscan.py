"""The certified 4-bit scan (quantrieve.pq.fastscan) returns the exact top-k, bit for bit."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from quantrieve.index.pq_index import PQIndex
from quantrieve.pq import CodeSearcher, GatherADC, lookup_tables, topk_smallest
from quantrieve.pq import adc as adc_module
from quantrieve.pq.fastscan import (
    FastScan,
    _new_index,
    _one_hot,
    _table_bytes,
    build_fastscan_index,
    fastscan_supported,
)

M, K, D = 8, 16, 4


def _exact(tables: torch.Tensor, codes: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return topk_smallest(GatherADC(codes, K)(tables), k)


def _fast(tables: torch.Tensor, codes: torch.Tensor, k: int, scan: FastScan | None = None):
    gather = GatherADC(codes, K)
    return (scan or FastScan(codes)).search(tables, k, gather.rows, gather)


def _queries(codebooks: torch.Tensor, num: int, gen: torch.Generator) -> torch.Tensor:
    """Queries near random codewords, so each has close neighbours."""
    books = codebooks.shape[0]
    picks = torch.randint(0, K, (num, books), generator=gen)
    near = codebooks[torch.arange(books), picks].reshape(num, -1)
    return near + 0.3 * torch.randn(num, near.shape[1], generator=gen)


@pytest.mark.parametrize("books", [8, 7, 2])
def test_packing_matches_faiss_add(books: int) -> None:
    codes = np.random.default_rng(books).integers(0, K, (1000, books)).astype(np.uint8)
    ours = build_fastscan_index(codes)
    theirs = _new_index(books)
    theirs.add(_one_hot(codes))
    assert np.array_equal(_table_bytes(ours), _table_bytes(theirs))
    assert (ours.ntotal, ours.ntotal2) == (theirs.ntotal, theirs.ntotal2)


def test_supported_shapes() -> None:
    assert fastscan_supported(8, 16, 10)
    assert not fastscan_supported(8, 8, 10)
    assert not fastscan_supported(8, 256, 10)
    assert not fastscan_supported(8, 16, 0)
    assert not fastscan_supported(300, 16, 10)


@pytest.mark.parametrize("distance", ["sqeuclidean", "l2"])
def test_random_codes_match_exact(distance: str) -> None:
    gen = torch.Generator().manual_seed(1)
    codes = torch.randint(0, K, (3000, M), generator=gen, dtype=torch.uint8)
    codebooks = torch.randn(M, K, D, generator=gen)
    tables = lookup_tables(_queries(codebooks, 12, gen), codebooks, distance)
    scan = FastScan(codes)
    for k in (1, 2, 10, 100, 1000, 5000):
        found = _fast(tables, codes, k, scan)
        d, i = _exact(tables, codes, k)
        assert torch.equal(found.indices, i), k
        assert torch.equal(found.distances, d), k
        assert found.distances.shape == (12, min(k, 3000))
    small = _fast(tables, codes, 10, scan)
    assert (small.rounds >= 1).all() and not small.exhaustive.any()


@pytest.mark.parametrize("distance", ["sqeuclidean", "l2"])
def test_ties_match_exact(distance: str) -> None:
    """Many equal codes (every row is one of 5) and tables with equal entries: the top-k's
    ties straddle every cut, and ties go to the lower row."""
    gen = torch.Generator().manual_seed(2)
    distinct = torch.randint(0, K, (5, M), generator=gen, dtype=torch.uint8)
    codes = distinct[torch.randint(0, 5, (4000,), generator=gen)]
    codebooks = torch.randn(M, K, D, generator=gen)
    codebooks[:, 8:] = codebooks[:, :8]  # equal table entries within each book
    tables = lookup_tables(_queries(codebooks, 6, gen), codebooks, distance)
    integer = torch.randint(0, 3, (6, M, K), generator=gen).float()  # equal sums everywhere
    scan = FastScan(codes)
    for tab in (tables, integer, torch.zeros(2, M, K)):
        for k in (1, 3, 64, 700, 1000):
            found = _fast(tab, codes, k, scan)
            d, i = _exact(tab, codes, k)
            assert torch.equal(found.indices, i), k
            assert torch.equal(found.distances, d), k


def test_close_distances_match_exact() -> None:
    """Tables whose per-book span is far below the offset, and one book dominating the scale:
    the rounding error is large against the gaps, so certificates fail and k' grows."""
    gen = torch.Generator().manual_seed(3)
    codes = torch.randint(0, K, (5000, M), generator=gen, dtype=torch.uint8)
    base = torch.rand(4, M, K, generator=gen)
    base[:, 0] *= 1000.0  # one book sets the 8-bit step: the others round to a few levels
    offset = 1e4 + torch.rand(4, M, K, generator=gen) * 1e-2
    scan = FastScan(codes)
    for tab in (base, offset):
        for k in (1, 10, 100):
            found = _fast(tab, codes, k, scan)
            d, i = _exact(tab, codes, k)
            assert torch.equal(found.indices, i)
            assert torch.equal(found.distances, d)


def test_rounding_bound_holds_for_every_item() -> None:
    """The lower bound the certificate uses, offset - accu / a, is below every item's float32
    distance, and within the 8-bit step of it (adversarial tables included)."""
    gen = torch.Generator().manual_seed(4)
    codes = torch.randint(0, K, (20000, M), generator=gen, dtype=torch.uint8)
    scan = FastScan(codes)
    gather = GatherADC(codes, K)
    wide = torch.rand(3, M, K, generator=gen)
    wide[:, 3] *= 1e3
    tables = [
        torch.rand(3, M, K, generator=gen),
        wide,
        1e4 + torch.rand(3, M, K, generator=gen),
        torch.randint(0, 2, (3, M, K), generator=gen).float() * 255.0,
        torch.rand(3, M, K, generator=gen) ** 8,
    ]
    flat = (codes.long() + torch.arange(M) * K).reshape(1, -1)
    for tab in tables:
        qtab, inv, offset, _ = scan.bounds(tab)
        accu = qtab.gather(1, flat.expand(len(tab), -1)).reshape(len(tab), -1, M).sum(2)
        bound = offset[:, None] - accu.double() * inv[:, None]
        dist = gather(tab).double()
        assert (dist > bound).all()
        # Tight: at most about one 8-bit step per book above the bound.
        assert ((dist - bound) <= (M + 1) * inv[:, None] + 1e-3 * dist.abs()).all()


def test_searcher_takes_the_fast_path_with_identical_results(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gen = torch.Generator().manual_seed(5)
    codes = torch.randint(0, K, (6000, M), generator=gen, dtype=torch.uint8)
    codebooks = torch.randn(M, K, D, generator=gen)
    queries = _queries(codebooks, 20, gen)
    monkeypatch.setattr(adc_module, "FASTSCAN_MIN_ITEMS", 0)
    fast = CodeSearcher(codebooks, codes)
    slow = CodeSearcher(codebooks, codes, fastscan=False)
    assert fast.fastscan and not slow.fastscan
    for distance in ("sqeuclidean", "l2"):
        for num in (1, 5, 20):  # 20: the one-hot product, not the fast path
            for k in (1, 10, 1000):
                got = fast.search(queries[:num], k, distance)
                want = slow.search(queries[:num], k, distance)
                assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert fast._fast is not None and fast.nbytes() > slow.nbytes()
    # Where the one-hot matrix does not fit, every chunk gathers: batches take the fast path.
    monkeypatch.setattr(adc_module, "MAX_ONEHOT_BYTES", 1)
    fast = CodeSearcher(codebooks, codes)
    slow = CodeSearcher(codebooks, codes, fastscan=False)
    got, want = fast.search(queries, 50), slow.search(queries, 50)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_small_or_wide_codes_keep_the_exact_path() -> None:
    codebooks = torch.randn(M, K, D)
    assert not CodeSearcher(codebooks, torch.zeros(100, M, dtype=torch.uint8)).fastscan
    wide = torch.randn(M, 256, D)
    codes = torch.zeros(adc_module.FASTSCAN_MIN_ITEMS, M, dtype=torch.uint8)
    assert not CodeSearcher(wide, codes).fastscan


def test_index_row_subsets_match(monkeypatch: pytest.MonkeyPatch) -> None:
    """An index's live rows (deleted items gone) are what the fast path scans."""
    rng = np.random.default_rng(6)
    codes = rng.integers(0, K, (5000, M)).astype(np.uint8)
    codes[::7] = codes[0]  # repeated codes: ties across the subset
    codebooks = rng.standard_normal((M, K, D)).astype(np.float32)
    index = PQIndex(codebooks=codebooks, codes=codes, ids=[str(i) for i in range(5000)])
    keep = rng.random(5000) > 0.3
    subset = index.with_rows(index.codes, index.ids, None, None, None, keep=keep)
    queries = torch.from_numpy(rng.standard_normal((4, M * D)).astype(np.float32))
    want = {d: subset.search(queries, 100, distance=d) for d in ("l2", "sqeuclidean")}
    monkeypatch.setattr(adc_module, "FASTSCAN_MIN_ITEMS", 0)
    fresh = index.with_rows(index.codes, index.ids, None, None, None, keep=keep)
    for distance, (d, i) in want.items():
        for num in (1, 4):
            got_d, got_i = fresh.search(queries[:num], 100, distance=distance)
            assert fresh.searcher().fastscan
            assert torch.equal(got_i, i[:num]) and torch.equal(got_d, d[:num])


@pytest.mark.parametrize("distance", ["sqeuclidean", "l2"])
def test_real_codes_with_deletions_match_exact(
    monkeypatch: pytest.MonkeyPatch, distance: str
) -> None:
    """PQ codes of real image data (8x8 patches of a photograph matplotlib ships, 8 books of 16
    codewords trained by faiss), a third of the items deleted: the fast path returns the exact
    search's items and distances for k from 1 to 1,000."""
    cbook = pytest.importorskip("matplotlib.cbook")
    from PIL import Image

    photo = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    pixels = np.asarray(photo.convert("L"), dtype=np.float32) / 255.0
    rng = np.random.default_rng(11)
    ys = rng.integers(0, pixels.shape[0] - 8, 6000)
    xs = rng.integers(0, pixels.shape[1] - 8, 6000)
    patches = np.stack([pixels[y : y + 8, x : x + 8].ravel() for y, x in zip(ys, xs, strict=True)])
    quantizer = faiss.ProductQuantizer(64, 8, 4)
    quantizer.train(np.ascontiguousarray(patches[:5000]))
    codebooks = faiss.vector_to_array(quantizer.centroids).reshape(8, 16, 8)
    packed = quantizer.compute_codes(np.ascontiguousarray(patches[:5000]))
    codes = np.stack([(packed[:, b // 2] >> (4 * (b % 2))) & 15 for b in range(8)], axis=1)
    assert len({tuple(c) for c in codes.tolist()}) > 1000  # real, varied codes with repeats
    index = PQIndex(codebooks=codebooks, codes=codes.astype(np.uint8), ids=[""] * 5000)
    keep = rng.random(5000) > 0.33
    queries = torch.from_numpy(patches[5000:5006])
    exact = index.with_rows(index.codes, index.ids, None, None, None, keep=keep).searcher()
    monkeypatch.setattr(adc_module, "FASTSCAN_MIN_ITEMS", 0)
    fast = index.with_rows(index.codes, index.ids, None, None, None, keep=keep)
    for k in (1, 10, 100, 1000):
        want_d, want_i = exact.search(queries[:1], k, distance)
        got_d, got_i = fast.search(queries[:1], k, distance=distance)
        assert fast.searcher().fastscan and not exact.fastscan
        assert torch.equal(got_i, want_i) and torch.equal(got_d, want_d), k
        for q in range(1, len(queries)):  # one query at a time: the gather path's batches
            want = exact.search(queries[q : q + 1], k, distance)
            got = fast.search(queries[q : q + 1], k, distance=distance)
            assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0]), (q, k)


@pytest.mark.parametrize("old", [0, 1, 31, 32, 33, 100])
@pytest.mark.parametrize("added", [1, 31, 64])
def test_an_extended_scan_packs_like_a_fresh_one(old: int, added: int) -> None:
    from quantrieve.pq.fastscan import build_fastscan_index, extend_fastscan_index

    rng = np.random.default_rng(old * 100 + added)
    codes = rng.integers(0, K, (old + added, M)).astype(np.uint8)
    before = build_fastscan_index(codes[:old])
    kept = _table_bytes(before).copy()
    grown = extend_fastscan_index(before, codes)
    fresh = build_fastscan_index(codes)
    assert np.array_equal(_table_bytes(grown), _table_bytes(fresh))
    assert (grown.ntotal, grown.ntotal2) == (fresh.ntotal, fresh.ntotal2)
    assert np.array_equal(_table_bytes(before), kept) and before.ntotal == old  # untouched


@pytest.mark.parametrize("distance", ["sqeuclidean", "l2"])
def test_an_extended_searcher_searches_like_a_fresh_one(
    monkeypatch: pytest.MonkeyPatch, distance: str
) -> None:
    monkeypatch.setattr(adc_module, "FASTSCAN_MIN_ITEMS", 0)
    rng = np.random.default_rng(8)
    codebooks = torch.from_numpy(rng.standard_normal((M, K, D)).astype(np.float32))
    codes = torch.from_numpy(rng.integers(0, K, (3000, M)).astype(np.uint8))
    codes[::5] = codes[1]  # ties
    first = CodeSearcher(codebooks, codes[:2500]).prepare()
    before = first.search(torch.zeros(1, M * D), 10, distance)
    grown = first.extended(codes)
    assert grown._gather is not None and grown._fast is not None  # carried, not rebuilt
    fresh = CodeSearcher(codebooks, codes)
    queries = torch.from_numpy(rng.standard_normal((12, M * D)).astype(np.float32))
    for k in (1, 10, 500):
        for num in (1, 12):  # one query (the scan), a batch
            got, want = (
                grown.search(queries[:num], k, distance),
                fresh.search(queries[:num], k, distance),
            )
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    after = first.search(torch.zeros(1, M * D), 10, distance)  # the old version is unchanged
    assert torch.equal(before[1], after[1]) and int(after[1].max()) < 2500


@pytest.mark.parametrize("max_tail", [100, 32_768])
def test_a_chain_of_appends_searches_like_fresh_searchers(
    monkeypatch: pytest.MonkeyPatch, max_tail: int
) -> None:
    """Rows appended one batch at a time: faiss's packed codes are shared while the unpacked
    tail is short and repacked past ``MAX_TAIL``; every version, a filtered search included,
    ranks like a searcher built from scratch, and a branch from an old version does not
    disturb the versions made after it."""
    from quantrieve.pq import fastscan as fastscan_module

    monkeypatch.setattr(adc_module, "FASTSCAN_MIN_ITEMS", 0)
    monkeypatch.setattr(fastscan_module, "MAX_TAIL", max_tail)
    rng = np.random.default_rng(21)
    codebooks = torch.from_numpy(rng.standard_normal((M, K, D)).astype(np.float32))
    codes = torch.from_numpy(rng.integers(0, K, (2600, M)).astype(np.uint8))
    codes[::7] = codes[3]  # ties across old and new rows
    queries = torch.from_numpy(rng.standard_normal((6, M * D)).astype(np.float32))
    versions = [CodeSearcher(codebooks, codes[:2000]).prepare()]
    for stop in (2001, 2050, 2170, 2400, 2600):
        versions.append(versions[-1].extended(codes[:stop]))
    branch = versions[2].extended(codes[:2300])  # from an old version: its own key columns
    for searcher in [*versions, branch]:
        n = len(searcher.codes)
        fresh = CodeSearcher(codebooks, codes[:n])
        rows = torch.arange(0, n, 2)  # half the rows: the scan with a mask
        for k in (1, 10, 300):
            got, want = searcher.search(queries[:1], k), fresh.search(queries[:1], k)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (n, k)
            got = searcher.search(queries[:1], k, rows=rows)
            want = fresh.search(queries[:1], k, rows=rows)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (n, k)
    fast = [v._fast for v in versions]
    assert all(f is not None for f in fast)
    packed = [f.indexed for f in fast]
    if max_tail >= 600:  # never repacked: one faiss index shared by every version
        assert all(f.index is fast[0].index for f in fast) and packed == [2000] * 6
    else:  # repacked whenever more than 100 rows lay past the packed ones
        assert packed == [2000, 2000, 2000, 2170, 2400, 2600]
    # the gathers share one key buffer; none wrote into rows another version uses
    assert versions[-1]._gather.keys.data_ptr() == versions[1]._gather.keys.data_ptr()
    assert branch._gather.keys.data_ptr() != versions[3]._gather.keys.data_ptr()


def test_an_extended_one_hot_scorer_scores_like_a_fresh_one() -> None:
    """The batch scorer's one-hot rows grow at their end like the gather's keys; past the
    one-hot limit the extended scorer gathers. Same distances as scorers built from scratch."""
    from quantrieve.pq import ADCScorer

    rng = np.random.default_rng(4)
    codes = torch.from_numpy(rng.integers(0, K, (900, M)).astype(np.uint8))
    tables = torch.from_numpy(rng.standard_normal((20, M, K)).astype(np.float32))
    limit = 800 * M * K * 4  # one-hot up to 800 items
    first = ADCScorer(codes[:500], K, limit)
    second = first.extended(codes[:600])
    third = second.extended(codes[:700])
    assert third.onehot is not None and third.onehot.data_ptr() == second.onehot.data_ptr()
    branch = second.extended(codes[:650])  # from an older scorer: its own rows
    beyond = third.extended(codes[:900], GatherADC(codes[:900], K))
    assert beyond.onehot is None and beyond.gather is not None
    for scorer, n in ((first, 500), (second, 600), (third, 700), (branch, 650), (beyond, 900)):
        want = ADCScorer(codes[:n], K, limit if n <= 800 else 0)(tables)
        assert torch.equal(scorer(tables), want), n
