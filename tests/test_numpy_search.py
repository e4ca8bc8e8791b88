"""The numpy search (quantrieve.pq.numpy_search, PQIndex.search_numpy), what a service without
torch ranks with, against the torch search: the same rows in the same order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from quantrieve.index.live import open_live
from quantrieve.index.pq_index import PQIndex
from quantrieve.index.writer import IndexWriter
from quantrieve.pq import lookup_tables
from quantrieve.pq.numpy_search import lookup_tables_np, topk_rows


def _index(books: int, codewords: int, n: int, refine: bool, seed: int = 0) -> PQIndex:
    rng = np.random.default_rng(seed)
    dim = 4
    codes = rng.integers(0, codewords, (n, books)).astype(np.uint8)
    codes[::7] = codes[2]  # tie groups
    content = rng.integers(0, 2**63, n).astype(np.uint64)
    content[::11] = 42  # copies of one image
    return PQIndex(
        rng.normal(size=(books, codewords, dim)).astype(np.float32),
        codes,
        [f"{'a' if i % 3 else 'b'}/{i}" for i in range(n)],
        labels=np.eye(2, dtype=bool)[np.arange(n) % 2],
        class_names=["x", "y"],
        content=content,
        refine=rng.normal(size=(n, books * dim)).astype(np.float16) if refine else None,
    )


def _queries(index: PQIndex, num: int, seed: int = 1) -> np.ndarray:
    """Queries near codewords: close neighbours and near-ties."""
    rng = np.random.default_rng(seed)
    books, codewords, _ = index.codebooks.shape
    picks = rng.integers(0, codewords, (num, books))
    near = index.codebooks[np.arange(books), picks].reshape(num, -1)
    return (near + 0.2 * rng.normal(size=near.shape)).astype(np.float32)


def _same_up_to_near_ties(
    want_d: np.ndarray, want_i: np.ndarray, got_d: np.ndarray, got_i: np.ndarray
) -> bool:
    """Whether two rankings agree but for the order of items whose distances differ by float
    rounding (the last group, cut by k, may hold different members of the tie)."""
    np.testing.assert_allclose(got_d, want_d, rtol=1e-5, atol=1e-5)
    for d, a, b in zip(want_d, want_i, got_i, strict=True):
        group = np.concatenate([[0], np.cumsum(np.diff(d) > 1e-5 * (1 + np.abs(d[1:])))])
        for g in np.unique(group)[:-1]:  # the last group may be cut by k
            if set(a[group == g]) != set(b[group == g]):
                return False
    return True


def test_tables_match_the_torch_tables() -> None:
    index = _index(8, 16, 10, False)
    queries = _queries(index, 30)
    for distance in ("l2", "sqeuclidean"):
        want = lookup_tables(torch.from_numpy(queries), torch.from_numpy(index.codebooks), distance)
        got = lookup_tables_np(queries, index.codebooks, distance)
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-6, atol=1e-6)


def test_topk_orders_by_distance_then_column_and_skips_infinite() -> None:
    dist = np.array([[3.0, 1.0, 1.0, np.inf, 0.5], [2.0, 2.0, 2.0, 2.0, np.inf]], np.float32)
    d, i = topk_rows(dist, 3)
    assert i.tolist() == [[4, 1, 2], [0, 1, 2]] and d[0].tolist() == [0.5, 1.0, 1.0]
    assert topk_rows(dist, 10)[1].shape == (2, 4)  # at most the finite ones


@pytest.mark.parametrize(
    ("books", "codewords", "refine"),
    [(8, 16, False), (8, 16, True), (7, 16, False), (4, 256, True)],
)
def test_the_numpy_search_ranks_like_the_torch_search(
    books: int, codewords: int, refine: bool
) -> None:
    index = _index(books, codewords, 3000, refine)
    queries = _queries(index, 25)
    prints = np.full(len(queries), 42, dtype=np.uint64)
    prints[::2] = 7
    cases = [
        {},
        {"fingerprints": prints},
        {"rows": index.filter_rows(["y"], "a/")},
        {"rows": index.filter_rows(None, "b/"), "fingerprints": prints},
        {"distance": "sqeuclidean"},
        {"refine_depth": 0},
    ]
    same = total = 0
    for case in cases:
        for k in (1, 10, 200):
            want_d, want_i = index.search(torch.from_numpy(queries), k, **case)
            got_d, got_i = index.search_numpy(queries, k, **case)
            assert _same_up_to_near_ties(want_d.numpy(), want_i.numpy(), got_d, got_i)
            same += int((got_i == want_i.numpy()).all(1).sum())
            total += len(queries)
    assert same >= 0.9 * total  # most rankings identical, to the last place


def test_hidden_rows_are_skipped_like_the_torch_search(tmp_path: Path) -> None:
    _index(8, 16, 500, True).save(tmp_path / "ix")
    with IndexWriter(tmp_path / "ix") as writer:
        live = writer.delete(open_live(tmp_path / "ix"), [2, 9, 16, 100])
    assert live.index.num_hidden == 4
    queries = _queries(live.index, 10)
    for k in (5, 500):
        want_d, want_i = live.index.search(torch.from_numpy(queries), k)
        got_d, got_i = live.index.search_numpy(queries, k)
        assert got_i.shape == (10, min(k, 496)) and not np.isin(got_i, [2, 9, 16, 100]).any()
        assert _same_up_to_near_ties(want_d.numpy(), want_i.numpy(), got_d, got_i)
