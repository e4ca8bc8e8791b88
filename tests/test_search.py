"""ADC look-up tables, tie-breaking top-k and code search, against loops and faiss."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch
from torch.testing import assert_close

from quantrieve.models import ProductQuantizer
from quantrieve.pq import (
    ADCScorer,
    GatherADC,
    adc_distances,
    lookup_tables,
    query_chunks,
    ranking,
    search_codes,
    squared_l2_distances,
    topk_smallest,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _setup(books: int, words: int, dim: int, queries: int, items: int, seed: int):
    """Codebooks, queries and random codes (duplicates likely when K^M is small)."""
    codebooks = torch.randn(books, words, dim, generator=_gen(seed))
    q = torch.randn(queries, books * dim, generator=_gen(seed + 1))
    codes = torch.randint(0, words, (items, books), generator=_gen(seed + 2)).to(torch.uint8)
    return codebooks, q, codes


def brute_distances(q: torch.Tensor, codebooks: torch.Tensor, codes: torch.Tensor, distance: str):
    """Loop reference: sqeuclidean = ||q - decode(code)||^2, l2 = sum_m ||q_m - c_{m,b_m}||."""
    books, _, dim = codebooks.shape
    q, c = q.double(), codebooks.double()
    out = torch.empty(len(q), len(codes), dtype=torch.float64)
    for i in range(len(q)):
        for n in range(len(codes)):
            decoded = torch.cat([c[m, int(codes[n, m])] for m in range(books)])
            if distance == "sqeuclidean":
                out[i, n] = ((q[i] - decoded) ** 2).sum()
            else:
                out[i, n] = sum(
                    float((q[i, m * dim : (m + 1) * dim] - decoded[m * dim : (m + 1) * dim]).norm())
                    for m in range(books)
                )
    return out


@pytest.mark.parametrize("distance", ["l2", "sqeuclidean"])
@pytest.mark.parametrize(("books", "words", "dim"), [(1, 4, 3), (2, 16, 3), (4, 16, 2)])
def test_tables_and_adc_match_brute_force(distance: str, books: int, words: int, dim: int) -> None:
    """lookup_tables + adc_distances equal the loop distance to the decoded vectors."""
    codebooks, q, codes = _setup(books, words, dim, queries=5, items=30, seed=books * 10 + dim)
    tables = lookup_tables(q, codebooks, distance)
    assert tables.shape == (5, books, words)
    for i in range(5):
        for m in range(books):
            for k in range(words):
                diff = q[i, m * dim : (m + 1) * dim].double() - codebooks[m, k].double()
                expected = (diff**2).sum() if distance == "sqeuclidean" else diff.norm()
                assert abs(float(tables[i, m, k]) - float(expected)) < 1e-4
    dist = adc_distances(tables, codes)
    assert dist.shape == (5, 30)
    assert_close(
        dist.double(), brute_distances(q, codebooks, codes, distance), rtol=1e-5, atol=1e-4
    )


@pytest.mark.parametrize(
    ("books", "words", "paired"), [(8, 16, True), (5, 16, True), (1, 16, False), (3, 32, False)]
)
def test_gather_and_onehot_scoring_equal_adc(books: int, words: int, paired: bool) -> None:
    """GatherADC (books paired into K*K tables when K <= 16, an odd book left single) and both
    ADCScorer paths equal adc_distances, into a reused buffer too, a few queries at a time."""
    codebooks, q, codes = _setup(books, words, 3, queries=9, items=50, seed=books + words)
    tables = lookup_tables(q, codebooks, "l2")
    expected = adc_distances(tables, codes)
    gather = GatherADC(codes, words)
    assert gather.paired == paired
    assert gather.nbytes() == (books // 2 + books % 2 if paired else books) * 50  # uint8 keys
    assert_close(gather(tables), expected, rtol=1e-6, atol=1e-5)
    many = torch.cat([codes] * 200)  # 10,000 items: blocks of 4,096 items
    assert_close(
        GatherADC(many, words)(tables), torch.cat([expected] * 200, 1), rtol=1e-6, atol=1e-5
    )
    for scorer in (ADCScorer(codes, words), ADCScorer(codes, words, max_onehot_bytes=0)):
        assert (scorer.onehot is None) == (scorer.gather is not None)
        buffer = torch.full((12, 50), float("nan"))
        out = scorer(tables, out=buffer)
        assert out.data_ptr() == buffer.data_ptr() and out.shape == (9, 50)
        assert_close(out, expected, rtol=1e-6, atol=1e-5)
        assert_close(scorer(tables[:4]), expected[:4], rtol=1e-6, atol=1e-5)
    with pytest.raises(ValueError, match="books"):
        gather(torch.cat([tables, tables[:, :1]], 1))


def test_sqeuclidean_adc_equals_decoded_distance_via_quantizer() -> None:
    """With a ProductQuantizer: ADC (sqeuclidean) == exact ||q - decode(encode(x))||^2."""
    torch.manual_seed(0)
    pq = ProductQuantizer(4, 16, 3)
    x = torch.randn(40, 12, generator=_gen(1))
    q = torch.randn(6, 12, generator=_gen(2))
    codes = pq.encode(x)
    adc = adc_distances(lookup_tables(q, pq.codebooks.detach(), "sqeuclidean"), codes)
    exact = squared_l2_distances(q, pq.decode(codes))
    assert_close(adc, exact, rtol=1e-5, atol=1e-4)


def test_l2_differs_from_sqeuclidean() -> None:
    """The papers' l2 is a sum of non-squared book distances, not sqrt of the squared sum."""
    codebooks, q, codes = _setup(2, 16, 3, queries=3, items=10, seed=3)
    l2 = adc_distances(lookup_tables(q, codebooks, "l2"), codes)
    sq = adc_distances(lookup_tables(q, codebooks, "sqeuclidean"), codes)
    assert (l2 >= sq.sqrt() - 1e-5).all()  # triangle inequality, strict for generic data
    assert (l2 - sq.sqrt()).abs().max() > 1e-2


def test_invalid_arguments() -> None:
    """Unknown distance, wrong query width and book-count mismatch raise ValueError."""
    codebooks, q, codes = _setup(2, 16, 3, queries=3, items=10, seed=4)
    with pytest.raises(ValueError):
        lookup_tables(q, codebooks, "cosine")
    with pytest.raises(ValueError):
        lookup_tables(q[:, :5], codebooks)
    with pytest.raises(ValueError):
        lookup_tables(q[0], codebooks)
    with pytest.raises(ValueError):
        adc_distances(lookup_tables(q, codebooks), codes[:, :1])


def test_squared_l2_distances() -> None:
    """Exact squared distances equal the loop values and are non-negative on duplicates."""
    x = torch.randn(7, 5, generator=_gen(5))
    q = torch.cat([x[:2], torch.randn(3, 5, generator=_gen(6))])
    d = squared_l2_distances(q, x)
    expected = ((q.double()[:, None] - x.double()[None]) ** 2).sum(-1)
    assert_close(d.double(), expected, rtol=1e-5, atol=1e-4)
    assert (d >= 0).all()


# ---------------------------------------------------------------- top-k with ties


def test_topk_ties_broken_by_index_with_signed_zeros() -> None:
    """Equal values (0.0 and -0.0 count as equal) come out by ascending column index."""
    row = [0.5, 0.0, -0.0, 0.5, 0.0, 1.0, -0.0, 0.5, 0.25]
    d = torch.tensor([row, row[::-1]])
    values, idx = topk_smallest(d, 6)
    assert idx.tolist() == [[1, 2, 4, 6, 8, 0], [2, 4, 6, 7, 0, 1]]
    assert values.tolist() == [[0.0, 0.0, 0.0, 0.0, 0.25, 0.5], [0.0, 0.0, 0.0, 0.0, 0.25, 0.5]]
    assert not torch.signbit(values).any()  # -0.0 is returned as 0.0
    assert idx.dtype == torch.int64


def test_topk_all_equal_and_k_above_width() -> None:
    """A constant row returns columns 0..N-1; k > N is clamped to N."""
    d = torch.full((3, 5), 2.0)
    values, idx = topk_smallest(d, 10)
    assert idx.tolist() == [[0, 1, 2, 3, 4]] * 3
    assert (values == 2.0).all()


def test_topk_handles_large_and_infinite_values() -> None:
    """Order is by value over the whole float range, inf last."""
    d = torch.tensor([[float("inf"), 3e38, 1e-30, 0.0, 7.0, 3e38, 1e-45]])
    _, idx = topk_smallest(d, 7)
    assert idx.tolist() == [[3, 6, 2, 4, 1, 5, 0]]


@pytest.mark.parametrize("k", [1, 7, 40, 100])
@pytest.mark.parametrize("seed", [0, 1])
def test_topk_matches_stable_argsort(k: int, seed: int) -> None:
    """Same indices as numpy's stable argsort, on data full of duplicates."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 6, size=(8, 40)).astype(np.float32) / 4
    fine = rng.random((8, 40)).astype(np.float32)
    fine[:, 20:] = fine[:, :20]  # every value twice
    for d in (coarse, fine):
        values, idx = topk_smallest(torch.from_numpy(d), k)
        expected = np.argsort(d, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(idx.numpy(), expected)
        np.testing.assert_array_equal(values.numpy(), np.take_along_axis(d, expected, 1))


@pytest.mark.parametrize("k", [1, 30, 120])
def test_sampled_topk_matches_stable_argsort(k: int) -> None:
    """Rows wide enough for the sampled threshold give numpy's stable order: many ties, signed
    zeros, a row of one value, and rows whose sampled columns are all small (the threshold then
    admits fewer than k + 1 items and the row is redone directly)."""
    width = 16 * (k + 1) + 5
    assert width >= ranking.MIN_SAMPLED_WIDTH * (k + 1)
    rng = np.random.default_rng(k)
    ties = rng.integers(0, 30, size=(6, width)).astype(np.float32) / 8
    ties[0] = 1.5
    ties[1, ::3] = -0.0
    unlucky = (1.0 + rng.random((3, width))).astype(np.float32)
    unlucky[:, :: ranking.STRIDE] = rng.random((3, len(range(0, width, ranking.STRIDE)))) / 10
    for d in (ties, unlucky, np.concatenate([ties, unlucky])):
        values, idx = topk_smallest(torch.from_numpy(d), k)
        expected = np.argsort(np.where(d == 0, 0.0, d), axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(idx.numpy(), expected)
        np.testing.assert_array_equal(values.numpy(), np.take_along_axis(d, expected, 1) + 0.0)


def test_query_chunks_cover_queries_within_budget() -> None:
    """Chunks are contiguous, cover every query once and respect the budget."""
    for num_q, num_items, budget in [(10, 3, 7), (5, 100, 7), (1, 1, 1), (100, 10, 2**24)]:
        chunks = list(query_chunks(num_q, num_items, budget))
        covered = [i for s in chunks for i in range(s.start, s.stop)]
        assert covered == list(range(num_q))
        for s in chunks:
            assert (s.stop - s.start) * num_items <= max(budget, num_items)


# ---------------------------------------------------------------- search


@pytest.mark.parametrize("k", [1, 5, 60, 100])
@pytest.mark.parametrize("distance", ["l2", "sqeuclidean"])
def test_search_codes_equals_brute_force(distance: str, k: int) -> None:
    """Top-k by ADC equals a stable sort of loop distances (duplicate codes tie by index)."""
    codebooks, q, codes = _setup(2, 4, 3, queries=4, items=60, seed=7)  # 16 code values
    assert len(torch.unique(codes, dim=0)) < len(codes)
    dist, idx = search_codes(q, codebooks, codes, k, distance)
    ref = brute_distances(q, codebooks, codes, distance).numpy()
    expected = np.argsort(ref, axis=1, kind="stable")[:, :k]
    assert dist.shape == idx.shape == (4, min(k, 60))
    np.testing.assert_array_equal(idx.numpy(), expected)
    np.testing.assert_allclose(
        dist.numpy(), np.take_along_axis(ref, expected, 1), rtol=1e-5, atol=1e-4
    )


# ---------------------------------------------------------------- faiss


def _unpack_4bit(packed: np.ndarray, books: int) -> np.ndarray:
    """faiss packs 4-bit codes two per byte, first code in the low nibble."""
    return np.stack([packed & 15, packed >> 4], axis=-1).reshape(len(packed), -1)[:, :books]


@pytest.mark.parametrize(("books", "dim"), [(4, 3), (3, 2), (8, 2)])
def test_matches_faiss_index_pq(books: int, dim: int) -> None:
    """faiss IndexPQ with our codebooks: same codes and same squared ADC distances."""
    torch.manual_seed(books)
    pq = ProductQuantizer(books, 16, dim)
    codebooks = pq.codebooks.detach()
    x = torch.randn(200, books * dim, generator=_gen(dim))
    q = torch.randn(5, books * dim, generator=_gen(dim + 1))

    index = faiss.IndexPQ(books * dim, books, 4)
    index.is_trained = True
    faiss.copy_array_to_vector(codebooks.numpy().ravel(), index.pq.centroids)
    faiss_codes = _unpack_4bit(index.sa_encode(x.numpy()), books)
    ours = pq.encode(x)
    np.testing.assert_array_equal(ours.numpy(), faiss_codes)
    np.testing.assert_allclose(
        index.sa_decode(index.sa_encode(x.numpy())), pq.decode(ours), rtol=0, atol=1e-6
    )

    index.add(x.numpy())
    faiss_d, faiss_i = index.search(q.numpy(), len(x))  # every item, so ties cannot hide one
    dense = np.full((len(q), len(x)), np.nan, dtype=np.float32)
    np.put_along_axis(dense, faiss_i, faiss_d, axis=1)
    adc = adc_distances(lookup_tables(q, codebooks, "sqeuclidean"), ours)
    np.testing.assert_allclose(adc.numpy(), dense, rtol=1e-4, atol=1e-4)

    top_d, _ = search_codes(q, codebooks, ours, 10, "sqeuclidean")
    np.testing.assert_allclose(top_d.numpy(), faiss_d[:, :10], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("num_books", "nbits"), [(4, 4), (3, 4), (5, 8), (3, 2)])
def test_faiss_code_packing_round_trips_and_matches_faiss(num_books: int, nbits: int) -> None:
    """Our packing equals faiss' own compute_codes layout, and unpacking inverts it."""
    import faiss

    from quantrieve.index.faiss_export import pack_codes, unpack_codes

    rng = np.random.default_rng(0)
    dsub = 2
    pq = faiss.ProductQuantizer(num_books * dsub, num_books, nbits)
    centroids = rng.normal(size=(num_books, 2**nbits, dsub)).astype(np.float32)
    faiss.copy_array_to_vector(centroids.ravel(), pq.centroids)
    codes = rng.integers(0, 2**nbits, size=(50, num_books)).astype(np.uint8)
    decoded = centroids[np.arange(num_books), codes].reshape(50, -1)
    np.testing.assert_array_equal(pack_codes(codes, nbits), pq.compute_codes(decoded))
    np.testing.assert_array_equal(unpack_codes(pack_codes(codes, nbits), num_books, nbits), codes)


def test_faiss_export_keeps_codes_of_near_duplicate_codewords() -> None:
    """IndexPQ export must not re-encode: codewords closer than float noise keep their codes."""
    import faiss

    from quantrieve.index import PQIndex
    from quantrieve.index.faiss_export import to_faiss, unpack_codes

    rng = np.random.default_rng(1)
    base = rng.normal(size=(2, 1, 4)).astype(np.float32)
    codebooks = base + 1e-7 * rng.normal(size=(2, 16, 4)).astype(np.float32)
    codes = rng.integers(0, 16, size=(40, 2)).astype(np.uint8)
    index = PQIndex(codebooks=codebooks, codes=codes, ids=[str(i) for i in range(40)])
    exported = to_faiss(index)
    stored = faiss.rev_swig_ptr(exported.codes.data(), exported.ntotal * exported.code_size)
    packed = np.array(stored, dtype=np.uint8).reshape(exported.ntotal, exported.code_size)
    np.testing.assert_array_equal(unpack_codes(packed, 2, 4), codes)
