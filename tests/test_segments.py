"""Live index changes (index/segment_files.py, live.py, writer.py, compaction.py): appended
segments, deletions, the manifest written last, a crash between the two, compaction, and the
command line seeing what a service serves."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from quantrieve.errors import OutputError
from quantrieve.index.compaction import compact
from quantrieve.index.directory import check_index_output
from quantrieve.index.format import IndexFormatError
from quantrieve.index.live import open_live
from quantrieve.index.pq_index import PQIndex
from quantrieve.index.segment_files import NewItems, has_segments
from quantrieve.index.writer import IndexBusyError, IndexWriter
from quantrieve.pq import CodeSearcher, lookup_tables

M, K, D = 4, 16, 3


def _index(tmp_path: Path, n: int = 12) -> Path:
    rng = np.random.default_rng(0)
    index = PQIndex(
        rng.normal(size=(M, K, D)).astype(np.float32),
        rng.integers(0, K, (n, M)).astype(np.uint8),
        [f"train:{i}" for i in range(n)],
        labels=np.eye(3, dtype=bool)[np.arange(n) % 3],
        class_names=["a", "b", "c"],
        content=np.arange(n, dtype=np.uint64),
        meta={"source": {"dataset": "fashion-mnist"}},
    )
    return index.save(tmp_path / "index")


def _items(n: int, seed: int = 1) -> NewItems:
    rng = np.random.default_rng(seed)
    return NewItems(
        codes=rng.integers(0, K, (n, M)).astype(np.uint8),
        pixels=rng.integers(0, 255, (n, 5, 5, 1)).astype(np.uint8),
        raw=[bytes([i]) * (i + 3) for i in range(n)],
        names=[f"photo{i}.png" for i in range(n)],
        labels=np.zeros((n, 3), dtype=bool),
        content=np.arange(1000, 1000 + n, dtype=np.uint64),
    )


def test_adds_and_deletes_load_as_base_plus_segments_minus_deleted(tmp_path: Path) -> None:
    path = _index(tmp_path)
    with IndexWriter(path) as writer:
        live = open_live(path)
        live = writer.append(live, _items(2))
        live = writer.delete(live, [3, 12])
        live = writer.append(live, _items(1, seed=2))
    assert has_segments(path)
    assert live.generation == 3 and live.next_key == 15
    assert live.keys.tolist() == [0, 1, 2, *range(4, 12), 13, 14]
    loaded = PQIndex.load(path)  # what quantrieve search / evaluate see
    assert loaded.ids == [f"train:{i}" for i in [0, 1, 2, *range(4, 12)]] + ["added:13", "added:14"]
    np.testing.assert_array_equal(loaded.codes, live.index.codes)
    assert loaded.labels is not None and loaded.labels.shape == (13, 3)
    assert loaded.content is not None and loaded.content[-2:].tolist() == [1001, 1000]
    reopened = open_live(path)
    assert reopened.keys.tolist() == live.keys.tolist() and reopened.generation == 3
    pixels, raw, name = reopened.read_added(reopened.row(13))  # type: ignore[arg-type]
    np.testing.assert_array_equal(pixels, _items(2).pixels[1])
    assert raw == bytes([1]) * 4 and name == "photo1.png"
    assert len(PQIndex.load(path, segments=False)) == 12  # the base files are untouched


def test_a_change_killed_before_its_manifest_leaves_the_previous_version(tmp_path: Path) -> None:
    path = _index(tmp_path)

    class KilledError(Exception):
        pass

    def die() -> None:
        raise KilledError

    with IndexWriter(path) as writer:
        live = writer.append(open_live(path), _items(1))
    with IndexWriter(path, before_commit=die) as writer, pytest.raises(KilledError):
        writer.append(live, _items(2, seed=5))
    assert (path / "segments" / "seg-000002.npz").is_file()  # written, never committed
    after = open_live(path)
    assert after.generation == 1 and len(after) == 13 and after.next_key == 13
    with IndexWriter(path) as writer:
        again = writer.append(after, _items(1, seed=6))  # same generation: orphan replaced
    assert again.keys[-1] == 13 and open_live(path).generation == 2
    assert len(PQIndex.load(path)) == 14


def test_altered_or_foreign_segments_are_refused(tmp_path: Path) -> None:
    path = _index(tmp_path)
    with IndexWriter(path) as writer:
        writer.append(open_live(path), _items(2))
    segment = path / "segments" / "seg-000001.npz"
    data = bytearray(segment.read_bytes())
    data[-40] ^= 1
    segment.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match="checksum differs"):
        PQIndex.load(path)
    segment.unlink()
    with pytest.raises(IndexFormatError, match="missing"):
        PQIndex.load(path)
    manifest = path / "segments" / "manifest.json"
    meta = json.loads(manifest.read_text())
    meta["base"]["index_json_sha256"] = "0" * 64
    manifest.write_text(json.dumps(meta))
    with pytest.raises(IndexFormatError, match="made for another base index"):
        PQIndex.load(path)


def test_one_writer_at_a_time_and_encode_never_replaces_added_items(tmp_path: Path) -> None:
    path = _index(tmp_path)
    with IndexWriter(path) as writer:
        with pytest.raises(IndexBusyError, match="another process is changing this index"):
            IndexWriter(path)
        with pytest.raises(IndexBusyError):
            compact(path)
        writer.append(open_live(path), _items(1))
    with pytest.raises(OutputError, match="items added or deleted through the search service"):
        check_index_output(path, overwrite=True)


def test_compaction_keeps_items_numbers_and_results(tmp_path: Path) -> None:
    path = _index(tmp_path)
    with IndexWriter(path) as writer:
        live = writer.append(open_live(path), _items(3))
        live = writer.delete(live, [0, 5, 13])
    before = PQIndex.load(path)
    queries = torch.randn(4, M * D)
    d0, i0 = before.search(queries, 5)
    report = compact(path)
    assert (report.items, report.base_items, report.added_items, report.dropped) == (12, 10, 2, 3)
    after = open_live(path)
    assert after.keys.tolist() == live.keys.tolist() and after.next_key == 15
    assert after.generation == 3 and not after.deleted and len(after.segments) == 1
    assert after.index.ids == before.ids
    d1, i1 = after.index.search(queries, 5)
    assert torch.equal(i0, i1) and torch.equal(d0, d1)
    assert len(PQIndex.load(path, segments=False)) == 10  # the new base: live base rows
    assert after.read_added(after.row(14))[1] == bytes([2]) * 5  # type: ignore[arg-type]
    assert sorted(p.name for p in path.parent.iterdir()) == ["index"]  # old version removed
    assert sorted(p.name for p in (path / "segments").iterdir()) == [
        "base-keys-000003.npy",
        "manifest.json",
        "seg-000003.npz",
    ]


@pytest.mark.parametrize("queries", [1, 3, 8, 9, 40])
def test_code_searcher_is_exact_and_repeatable(queries: int) -> None:
    rng = np.random.default_rng(queries)
    codebooks = torch.from_numpy(rng.normal(size=(M, K, D)).astype(np.float32))
    codes = torch.from_numpy(rng.integers(0, K, (300, M)).astype(np.uint8))
    q = torch.randn(queries, M * D)
    searcher = CodeSearcher(codebooks, codes)
    for distance in ("l2", "sqeuclidean"):
        d, i = searcher.search(q, 7, distance)
        tables = lookup_tables(q, codebooks, distance)
        brute = sum(tables[:, m, codes[:, m].long()] for m in range(M))
        ref_d, _ = brute.sort(dim=1, stable=True)
        torch.testing.assert_close(d, ref_d[:, :7])
        d2, i2 = searcher.search(q, 7, distance)
        assert torch.equal(i, i2) and torch.equal(d, d2)
    assert searcher.search(q[:0], 3)[0].shape[0] == 0


def test_merge_plan_picks_adjacent_segments_of_one_tier() -> None:
    from quantrieve.index.writer import merge_plan

    assert merge_plan([1] * 9) is None
    assert merge_plan([1] * 10) == (0, 10)
    assert merge_plan([100, 1, 1, 1, 5, 1, 1], factor=3) == (1, 4)
    assert merge_plan([30, 12, 1, 1, 10, 11], factor=3) is None  # tiers 3, 2, 0, 0, 2, 2
    assert merge_plan([10, 12, 15, 1], factor=10) is None  # 3 of tier 1 only
    assert merge_plan([10, 12, 15, 1], factor=3) == (0, 3)
    with pytest.raises(ValueError):
        merge_plan([1], factor=1)


def test_many_small_adds_are_merged_and_search_as_without_merging(tmp_path: Path) -> None:
    merged_dir, plain_dir = _index(tmp_path / "a"), _index(tmp_path / "b")
    for path, factor in ((merged_dir, 3), (plain_dir, 0)):
        with IndexWriter(path, merge_factor=factor) as writer:
            live = open_live(path)
            for i in range(20):
                live = writer.append(live, _items(1 + i % 2, seed=i))
                if i == 7:
                    live = writer.delete(live, [int(live.keys[-1])])
    merged, plain = open_live(merged_dir), open_live(plain_dir)
    files = sorted(p.name for p in (merged_dir / "segments").glob("seg-*.npz"))
    assert len(plain.segments) == 20 and len(merged.segments) == len(files) <= 6
    assert merged.keys.tolist() == plain.keys.tolist()
    np.testing.assert_array_equal(merged.index.codes, plain.index.codes)
    assert merged.index.ids == plain.index.ids and merged.deleted == plain.deleted
    for row in (12, len(merged) - 1):  # an added item reads back from its merged segment
        a, b = merged.read_added(row), plain.read_added(row)
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1:] == b[1:]
    query = torch.from_numpy(np.random.default_rng(5).normal(size=(3, M * D)).astype(np.float32))
    for x, y in zip(merged.index.search(query, 8), plain.index.search(query, 8), strict=True):
        np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_a_merge_killed_before_its_commit_leaves_the_previous_version(tmp_path: Path) -> None:
    path = _index(tmp_path)
    with IndexWriter(path, merge_factor=0) as writer:
        live = open_live(path)
        for i in range(3):
            live = writer.append(live, _items(2, seed=i))

    def killed() -> None:
        raise KeyboardInterrupt

    with (
        IndexWriter(path, before_commit=killed, merge_factor=3) as writer,
        pytest.raises(KeyboardInterrupt),
    ):
        writer.merge(open_live(path))
    assert len(list((path / "segments").glob("seg-*.npz"))) == 4  # the unreferenced merge
    before = open_live(path)
    assert len(before.segments) == 3 and len(before) == 12 + 6
    with IndexWriter(path, merge_factor=3) as writer:  # opening removes the orphan
        assert len(list((path / "segments").glob("seg-*.npz"))) == 3
        after = writer.merge(open_live(path))
    assert len(after.segments) == 1 and after.keys.tolist() == before.keys.tolist()
    assert open_live(path).keys.tolist() == before.keys.tolist()


def test_an_append_checks_the_new_ids_only_but_checks_them(tmp_path: Path) -> None:
    """Appending rows scans only the new ids for line breaks (an add costs no pass over every
    id), and a bad new id is still refused."""
    from quantrieve.index.format import IndexFormatError
    from quantrieve.index.pq_index import PQIndex

    rng = np.random.default_rng(0)
    index = PQIndex(
        codebooks=rng.normal(size=(2, 16, 2)).astype(np.float32),
        codes=rng.integers(0, 16, (3, 2)).astype(np.uint8),
        ids=["a", "b", "c"],
    )
    index.add(np.zeros((1, 2), np.uint8), ["d"])
    assert index.ids == ["a", "b", "c", "d"]
    with pytest.raises(IndexFormatError, match="line breaks"):
        index.add(np.zeros((1, 2), np.uint8), ["e\nf"])
    with pytest.raises(IndexFormatError, match="line breaks"):
        PQIndex(index.codebooks, index.codes, ["x\r", *index.ids[1:]])


def test_an_append_extends_the_search_state_of_the_version_before(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A service's add makes the next version's search state from the previous one's (the new
    rows packed, not every row), with the same results as a state built from scratch."""
    import torch

    import quantrieve.pq.adc as adc_module
    from quantrieve.index.live import open_live
    from quantrieve.index.pq_index import PQIndex
    from quantrieve.index.segment_files import NewItems
    from quantrieve.index.writer import IndexWriter

    monkeypatch.setattr(adc_module, "FASTSCAN_MIN_ITEMS", 0)
    rng = np.random.default_rng(2)
    n = 500
    PQIndex(
        codebooks=rng.normal(size=(4, 16, 2)).astype(np.float32),
        codes=rng.integers(0, 16, (n, 4)).astype(np.uint8),
        ids=[f"i{i}" for i in range(n)],
    ).save(tmp_path / "ix")
    live = open_live(tmp_path / "ix")
    live.index.searcher().prepare()
    new = NewItems(
        codes=rng.integers(0, 16, (3, 4)).astype(np.uint8),
        pixels=np.zeros((3, 4, 4, 1), np.uint8),
        raw=[b""] * 3,
        names=["a", "b", "c"],
    )
    with IndexWriter(tmp_path / "ix") as writer:
        grown = writer.append(live, new)
    carried = grown.index.__dict__["_searcher"][2]
    assert carried._fast is not None and carried._fast.num_items == n + 3
    query = torch.from_numpy(rng.normal(size=(1, 8)).astype(np.float32))
    fresh = PQIndex.load(tmp_path / "ix")
    assert torch.equal(grown.index.search(query, 20)[1], fresh.search(query, 20)[1])


@pytest.mark.parametrize("dropped", [1, 5, 40, 700])
def test_rows_kept_by_a_mask_keep_their_ids_in_order(dropped: int) -> None:
    """Deleting a few rows (list moves), some (slices) or many (a pick per row) keeps the same
    ids in the same order."""
    from quantrieve.index.pq_index import PQIndex

    rng = np.random.default_rng(dropped)
    n = 2000
    index = PQIndex(
        codebooks=rng.normal(size=(2, 16, 2)).astype(np.float32),
        codes=rng.integers(0, 16, (n, 2)).astype(np.uint8),
        ids=[f"id{i}" for i in range(n)],
    )
    keep = np.ones(n, dtype=bool)
    keep[rng.choice(n, dropped, replace=False)] = False
    kept = index.with_rows(index.codes, index.ids, None, None, None, keep, rows_checked=n)
    assert kept.ids == [f"id{i}" for i in np.flatnonzero(keep)]
    assert np.array_equal(kept.codes, index.codes[keep])
    assert index.ids == [f"id{i}" for i in range(n)]  # the source list is left as it was


def test_appends_and_merges_copy_no_old_rows_and_read_back_every_item(tmp_path: Path) -> None:
    """The versions an append or a merge makes share the old rows' columns (written at their
    end, not copied), and the version in memory reads every added item from its merged
    segments exactly as the index opened again from disk does."""
    path = _index(tmp_path)
    added = {}
    with IndexWriter(path, merge_factor=3) as writer:
        live = open_live(path)
        for i in range(14):
            items = _items(1 + i % 2, seed=i)
            before = live
            live = writer.append(live, items)
            for j in range(len(items)):
                added[int(live.keys[before.num_rows + j])] = (items.pixels[j], items.names[j])
            if i > 0:  # the version before's columns extended in place, not copied (the
                # first append copies once, into room to grow; a delete hides rows, copies none)
                for name in ("keys", "part", "local"):
                    assert np.shares_memory(getattr(live, name), getattr(before, name)), name
                assert np.shares_memory(live.index.codes, before.index.codes)
                assert np.shares_memory(live.index.content, before.index.content)
            if i == 9:
                gone = int(live.keys[13])  # an added item
                live = writer.delete(live, [gone])
                added.pop(gone)
    assert len(live.segments) < 14  # merged as it went
    reopened = open_live(path)
    visible = [r for r, k in enumerate(live.keys.tolist()) if live.row(k) == r]
    assert len(visible) == len(live) == len(reopened) == live.num_rows - 1
    assert reopened.keys.tolist() == live.keys[visible].tolist()
    assert list(reopened.index.ids) == [live.index.ids[r] for r in visible]
    assert sorted(int(k) for k in live.keys[visible][12:]) == sorted(added)
    for row in visible[12:]:
        key = int(live.keys[row])
        pixels, _, name = live.read_added(row)
        again = reopened.read_added(reopened.row(key))
        np.testing.assert_array_equal(pixels, added[key][0])
        np.testing.assert_array_equal(again[0], added[key][0])
        assert name == again[2] == added[key][1]


@pytest.mark.slow
def test_a_merge_killed_by_sigkill_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL between a merge's merged segment file and its manifest: every item, number and
    image stays as the last acknowledged change left it; the next writer clears the orphan and
    merges again."""
    import signal
    import subprocess
    import sys
    import time

    path = _index(tmp_path)
    with IndexWriter(path, merge_factor=0) as writer:
        live = open_live(path)
        for i in range(10):  # ten single-item segments of one tier: one merge due
            live = writer.append(live, _items(1, seed=i))
    manifest = path / "segments" / "manifest.json"
    before = manifest.read_bytes()
    keys, pixels = live.keys.tolist(), [live.read_added(r)[0] for r in range(12, 22)]
    script = (
        "import sys; from quantrieve.index.live import open_live; "
        "from quantrieve.index.writer import IndexWriter, commit_pause; "
        "IndexWriter(sys.argv[1], before_commit=commit_pause()).merge(open_live(sys.argv[1]))"
    )
    env = {**os.environ, "QUANTRIEVE_TEST_COMMIT_DELAY": "60"}
    process = subprocess.Popen([sys.executable, "-c", script, str(path)], env=env)
    named = {s["file"] for s in json.loads(before)["segments"]}
    deadline = time.monotonic() + 120
    merged: list[Path] = []
    while not merged and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
        merged = [p for p in (path / "segments").glob("seg-*.npz") if p.name not in named]
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert merged, "the merge never wrote its segment"
    assert manifest.read_bytes() == before
    again = open_live(path)
    assert again.keys.tolist() == keys and len(again.segments) == 10
    for row in range(12, 22):
        np.testing.assert_array_equal(again.read_added(row)[0], pixels[row - 12])
    with IndexWriter(path) as writer:  # the orphan is cleared, the merge made again
        assert not merged[0].exists()
        done = writer.merge(open_live(path))
    assert len(done.segments) == 1 and open_live(path).keys.tolist() == keys
    for row in range(12, 22):
        np.testing.assert_array_equal(done.read_added(row)[0], pixels[row - 12])
