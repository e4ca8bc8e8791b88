"""Deletes from a live index hide rows (quantrieve.pq.hidden) instead of copying the index:
every search, filter and copy lookup of the new version is that of the index with those rows
dropped, older versions still see them, and hidden rows are dropped in bulk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import quantrieve.pq.adc as adc_module
from quantrieve.index.live import LiveIndex, open_live
from quantrieve.index.pq_index import PQIndex
from quantrieve.index.segment_files import NewItems
from quantrieve.index.writer import IndexWriter

M, K, D = 4, 16, 3


def _save(path: Path, n: int, refine: bool = False) -> Path:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, K, (n, M)).astype(np.uint8)
    codes[::9] = codes[4]  # tie groups, some of them hidden below
    content = np.arange(n, dtype=np.uint64)
    content[::9] = 777  # exact copies of one image
    PQIndex(
        rng.normal(size=(M, K, D)).astype(np.float32),
        codes,
        [f"{'a' if i % 2 else 'b'}/{i}.png" for i in range(n)],
        labels=np.eye(3, dtype=bool)[np.arange(n) % 3],
        class_names=["x", "y", "z"],
        content=content,
        refine=rng.normal(size=(n, M * D)).astype(np.float16) if refine else None,
    ).save(path)
    return path


def _items(n: int, seed: int, refine: bool = False) -> NewItems:
    rng = np.random.default_rng(seed)
    return NewItems(
        codes=rng.integers(0, K, (n, M)).astype(np.uint8),
        pixels=np.zeros((n, 4, 4, 1), np.uint8),
        raw=[b""] * n,
        names=[f"n{i}.png" for i in range(n)],
        labels=np.eye(3, dtype=bool)[np.arange(n) % 3],
        content=np.full(n, 777, dtype=np.uint64),
        refine=rng.normal(size=(n, M * D)).astype(np.float16) if refine else None,
    )


def _by_key(live: LiveIndex, dists: torch.Tensor, rows: torch.Tensor) -> list:
    keys = live.keys
    return [
        [(float(d), int(keys[r])) for d, r in zip(dq.tolist(), rq.tolist(), strict=True)]
        for dq, rq in zip(dists, rows, strict=True)
    ]


@pytest.mark.parametrize("fastscan", [False, True])
@pytest.mark.parametrize("refine", [False, True])
def test_a_version_with_hidden_rows_searches_like_the_index_without_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fastscan: bool, refine: bool
) -> None:
    if fastscan:
        monkeypatch.setattr(adc_module, "FASTSCAN_MIN_ITEMS", 0)
    path = _save(tmp_path / "ix", 600, refine)
    with IndexWriter(path) as writer:
        live = open_live(path)
        live.index.searcher().prepare()
        live = writer.append(live, _items(20, 1, refine))
        gone = [4, 13, 22, 300, 601, 615]  # copies, tied codes, added items
        before = live
        live = writer.delete(live, gone[:3])
        live = writer.delete(live, gone[3:])
    assert live.num_rows == 620 and len(live) == 614 and live.index.num_hidden == 6
    assert all(live.row(k) is None for k in gone) and live.row(5) == 5
    reopened = open_live(path)  # rows dropped, as the files have it
    assert reopened.num_rows == len(reopened) == 614
    rng = np.random.default_rng(3)
    queries = torch.from_numpy(rng.normal(size=(5, M * D)).astype(np.float32))
    prints = np.array([777, 1, 2, 3, 4], dtype=np.uint64)
    for k in (1, 10, 100, 700):
        for q in (queries[:1], queries):
            got = live.index.search(q, k, fingerprints=prints[: len(q)])
            want = reopened.index.search(q, k, fingerprints=prints[: len(q)])
            assert _by_key(live, *got) == _by_key(reopened, *want), k
        for labels, prefix in ((["y"], None), (None, "a/"), (["x", "z"], "b/")):
            rows = live.index.filter_rows(labels, prefix)
            again = reopened.index.filter_rows(labels, prefix)
            assert live.keys[rows].tolist() == reopened.keys[again].tolist()
            got = live.index.search(queries, k, rows=rows)
            want = reopened.index.search(queries, k, rows=again)
            assert _by_key(live, *got) == _by_key(reopened, *want)
    assert (
        live.keys[live.index.copies(777)].tolist()
        == reopened.keys[reopened.index.copies(777)].tolist()
    )
    # the version before the deletes still finds the deleted items
    found = before.index.search(queries, 620)[1]
    assert {4, 13, 22, 300, 601, 615} <= set(before.keys[found[0]].tolist())
    assert before.row(4) == 4 and len(before) == 620


def test_hidden_rows_are_dropped_in_bulk_and_nothing_is_lost(tmp_path: Path) -> None:
    path = _save(tmp_path / "ix", 80)
    with IndexWriter(path) as writer:
        live = open_live(path)
        for key in range(0, 10):  # more than 1/8 of 80 rows: dropped at the 11th hidden row
            live = writer.delete(live, [key])
            assert live.num_rows == 80 and live.index.num_hidden == key + 1
        live = writer.delete(live, [10])
        assert live.num_rows == len(live) == 69 and live.index.num_hidden == 0
        live = writer.delete(live, [11], drop=True)
        assert live.num_rows == 68
        live = writer.append(live, _items(3, 2))
        live = writer.delete(live, [int(live.keys[-1])])
        assert live.index.num_hidden == 1 and len(live) == 70
    reopened = open_live(path)
    assert sorted(reopened.deleted) == [*range(12), 82]
    assert reopened.keys.tolist() == [k for k in live.keys.tolist() if live.row(k) is not None]
    # saving a version with hidden rows writes the live items only
    saved = PQIndex.load(live.index.save(tmp_path / "copy"))
    assert len(saved) == 70 and list(saved.ids) == list(reopened.index.ids)


def test_a_delete_that_never_committed_hides_nothing(tmp_path: Path) -> None:
    path = _save(tmp_path / "ix", 50)

    def killed() -> None:
        raise KeyboardInterrupt

    live = open_live(path)
    with IndexWriter(path, before_commit=killed) as writer, pytest.raises(KeyboardInterrupt):
        writer.delete(live, [7])
    assert live.row(7) == 7 and len(live) == 50
    with IndexWriter(path) as writer:
        after = writer.delete(live, [8])  # the next generation stamps only its own rows
    assert after.row(7) == 7 and after.row(8) is None and len(after) == 49
    query = torch.from_numpy(np.random.default_rng(1).normal(size=(1, M * D)).astype(np.float32))
    assert 7 in after.keys[after.index.search(query, 50)[1][0]].tolist()
    assert open_live(path).deleted == frozenset({8})


@pytest.mark.parametrize("refine", [False, True])
def test_evaluation_of_a_version_with_hidden_rows_scores_the_index_without_them(
    tmp_path: Path, refine: bool
) -> None:
    """Deleted items not yet dropped are not searched, so `Retriever.evaluate` does not score
    them either: the same numbers as the index with those rows dropped."""
    import quantrieve as qr
    from quantrieve.data import ImageSet

    path = _save(tmp_path / "ix", 300, refine)
    with IndexWriter(path) as writer:
        live = writer.delete(open_live(path), [0, 4, 9, 18, 100, 101, 102])
    reopened = open_live(path)
    rng = np.random.default_rng(5)
    queries = ImageSet(
        images=rng.integers(0, 255, (12, 4, 4, 1), dtype=np.uint8),
        labels=np.eye(3, dtype=bool)[np.arange(12) % 3],
        ids=[f"q{i}" for i in range(12)],
        class_names=["x", "y", "z"],
    )
    f = torch.from_numpy(rng.normal(size=(12, M * D)).astype(np.float32))
    scores = []
    for index in (live.index, reopened.index):
        retriever = qr.Retriever(index=index)
        scores.append(retriever.evaluate(queries, k=50, precision_at=[10], embeddings=f))
    with_hidden, dropped = scores
    assert live.index.num_hidden == 7
    assert with_hidden.num_database == dropped.num_database == 293
    assert with_hidden.map_at_k == pytest.approx(dropped.map_at_k, abs=1e-6)
    assert with_hidden.precision_at == pytest.approx(dropped.precision_at, abs=1e-6)
