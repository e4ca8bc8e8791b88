"""`quantrieve add` / `sync`: an image-folder index kept in step with its folder, files referred
to rather than copied, the same item numbers in the API, the command line and the service."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import build_tiny_index
from PIL import Image
from typer.testing import CliRunner

from quantrieve.api import Retriever
from quantrieve.api import folder_sync as sync_module
from quantrieve.api.folder_sync import add_files, sync_folder
from quantrieve.cli import app
from quantrieve.errors import QuantrieveError
from quantrieve.index.live import open_live

CLASSES = ("low", "high")
PER_CLASS = 24


def photo(path: Path, cls: int, seed: int) -> None:
    image = np.random.default_rng(seed).integers(0, 70, (40, 48, 3)).astype(np.uint8)
    image[cls * 20 : cls * 20 + 8] = 230
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


@pytest.fixture(scope="module")
def folder_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("sync")
    for c, name in enumerate(CLASSES):
        for i in range(PER_CLASS):
            photo(base / "photos" / name / f"{i:02d}.png", c, 100 * c + i)
    return build_tiny_index(
        base / "photos", base, "--dataset", "image-folder", "--image-size", "16"
    )


def test_sync_adds_removes_and_replaces_and_everyone_sees_the_same_items(
    folder_index: Path, tmp_path: Path, monkeypatch
) -> None:
    index_dir = Path(shutil.copytree(folder_index, tmp_path / "index"))
    root = Path(open_live(index_dir).index.meta["source"]["root"])
    total = len(CLASSES) * PER_CLASS
    assert sync_folder(index_dir, workers=1).unchanged == total  # in step already

    photo(root / "high" / "new-1.png", 1, 7001)
    photo(root / "low" / "new-2.png", 0, 7002)
    (root / "low" / "03.png").unlink()
    photo(root / "high" / "05.png", 0, 7003)  # changed content
    (root / "high" / "broken.png").write_bytes(b"not an image")
    live = open_live(index_dir)
    old_05 = int(live.keys[live.index.ids.index("high/05.png")])

    result = CliRunner().invoke(app, ["sync", str(index_dir), "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "added 3, removed 1, replaced 1 (changed files)" in result.output
    assert "skipped high/broken.png" in result.output

    live = open_live(index_dir)
    ids = live.index.ids
    assert len(live) == total - 1 + 2 and "low/03.png" not in ids
    assert ids.count("high/05.png") == 1 and live.row(old_05) is None
    new = {i: int(live.keys[ids.index(i)]) for i in ("high/new-1.png", "low/new-2.png")}
    assert min(new.values()) >= total  # new numbers, never reused
    row = live.row(new["high/new-1.png"])
    pixels, raw, name = live.read_added(row)
    assert raw == b"" and name == "new-1.png"  # a reference to the file, not a copy
    assert live.index.label_names(row) == ["high"]

    # The API finds the new file's item first (its own pixels); the service names it alike.
    retriever = Retriever.load(index_dir, device="cpu")
    hit = retriever.search(pixels[None], k=1).hits[0][0]
    assert (hit.item, hit.id) == (new["high/new-1.png"], "high/new-1.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    from quantrieve.serve import create_app

    with TestClient(create_app(index_dir)) as client:
        item = client.get(f"/items/{new['high/new-1.png']}").json()
        assert item["id"] == "high/new-1.png" and item["labels"] == ["high"]
        assert client.get(f"/items/{new['high/new-1.png']}/image").status_code == 200
    # Nothing changed: nothing to do. The unreadable file is reported again, never added.
    again = sync_folder(index_dir, workers=1)
    assert (again.added, again.removed, again.replaced) == ([], [], [])
    assert list(again.unreadable) == ["high/broken.png"]
    (root / "high" / "broken.png").unlink()
    # The command line names the item alike.
    query = str(root / "high" / "new-1.png")
    shown = CliRunner().invoke(app, ["search", str(index_dir), query, "-k", "1", "--json"])
    assert shown.exit_code == 0, shown.output
    assert f'"item": {hit.item}' in shown.output and '"id": "high/new-1.png"' in shown.output

    # A sync killed between its additions and its removals: the next one finishes the job.
    photo(root / "low" / "07.png", 1, 7004)

    def killed(*_args: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(sync_module.IndexWriter, "delete", killed)
        with pytest.raises(KeyboardInterrupt):
            sync_folder(index_dir, workers=1)
    assert open_live(index_dir).index.ids.count("low/07.png") == 2
    finished = sync_folder(index_dir, workers=1)
    assert len(finished.removed) == 1 and not finished.added
    assert open_live(index_dir).index.ids.count("low/07.png") == 1


def test_add_refers_to_files_of_the_folder_only(folder_index: Path, tmp_path: Path) -> None:
    index_dir = Path(shutil.copytree(folder_index, tmp_path / "index"))
    root = Path(open_live(index_dir).index.meta["source"]["root"])
    photo(root / "low" / "added.png", 0, 9001)
    try:
        report = add_files(index_dir, [root / "low" / "added.png"], workers=1)
        live = open_live(index_dir)
        assert live.index.ids[live.row(report.added[0])] == "low/added.png"
        with pytest.raises(QuantrieveError, match="already in the index"):
            add_files(index_dir, [root / "low" / "added.png"])
        photo(tmp_path / "outside.png", 0, 9002)
        with pytest.raises(QuantrieveError, match="not in the index's image folder"):
            add_files(index_dir, [tmp_path / "outside.png"])
        photo(root / "unsorted.png", 0, 9003)
        with pytest.raises(QuantrieveError, match="labelled by class folders"):
            add_files(index_dir, [root / "unsorted.png"])
    finally:  # the folder is shared by this module's tests
        for extra in (root / "low" / "added.png", root / "unsorted.png"):
            extra.unlink(missing_ok=True)


def test_batch_search_streams_one_line_per_query(folder_index: Path, tmp_path: Path) -> None:
    import csv
    import json

    root = Path(open_live(folder_index).index.meta["source"]["root"])
    listed = sorted(p for p in root.rglob("*.png"))[:5]
    list_file = tmp_path / "queries.txt"
    (tmp_path / "broken.png").write_bytes(b"no image")
    lines = [str(p) for p in listed] + ["# a comment", "", "broken.png", "missing.png"]
    list_file.write_text("\n".join(lines) + "\n")
    out = tmp_path / "results.jsonl"
    args = ["search", str(folder_index), "--batch", str(list_file), "--out", str(out), "-k", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "searched 5 queries (2 unreadable)" in result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["query"] for r in rows] == [*map(str, listed), str(tmp_path / "broken.png"),
                                          str(tmp_path / "missing.png")]  # fmt: skip
    index = open_live(folder_index).index
    for row, path in zip(rows[:5], listed, strict=True):
        first = row["results"][0]  # an indexed image finds itself first (same pixels)
        assert first["id"] == path.relative_to(root).as_posix() and first["distance"] == 0.0
        assert first["item"] == index.ids.index(first["id"]) and "row" not in first
        assert len(row["results"]) == 3
    assert "unreadable image" in rows[5]["error"] and rows[6]["error"] == "file not found"

    # The same as CSV, a folder this time: one line per hit, queries in id order.
    out_csv = tmp_path / "results.csv"
    folder_args = ["search", str(folder_index), "--batch", str(root / "low"), "--out"]
    result = CliRunner().invoke(app, [*folder_args, str(out_csv), "-k", "2"])
    assert result.exit_code == 0, result.output
    hits = list(csv.DictReader(out_csv.open()))
    queries = sorted({h["query"] for h in hits})
    assert len(hits) == 2 * len(queries) and len(queries) == len(list((root / "low").glob("*.png")))
    refused = CliRunner().invoke(app, [*folder_args, str(tmp_path / "r.txt")])
    assert "must end in .jsonl or .csv" in str(refused.exception)

    # Filtered by a sub-folder (an id prefix): only its images come back.
    out_low = tmp_path / "low.jsonl"
    filtered = [*folder_args, str(out_low), "-k", "4", "--id-prefix", "high/"]
    result = CliRunner().invoke(app, filtered)
    assert result.exit_code == 0, result.output
    found = [h for line in out_low.read_text().splitlines() for h in json.loads(line)["results"]]
    assert found and all(h["id"].startswith("high/") for h in found)


def test_an_index_follows_its_folder_to_a_new_place(folder_index: Path, tmp_path: Path) -> None:
    index_dir = Path(shutil.copytree(folder_index, tmp_path / "index"))
    sync_folder(index_dir, workers=1)  # in step with the folder (which earlier tests changed)
    old_root = Path(open_live(index_dir).index.meta["source"]["root"])
    new_root = Path(shutil.copytree(old_root, tmp_path / "moved" / "photos"))  # mtimes kept
    before = open_live(index_dir)
    photo(new_root / "low" / "after-move.png", 0, 4242)
    result = CliRunner().invoke(app, ["sync", str(index_dir), str(new_root)])
    assert result.exit_code == 0, result.output
    assert "added 1, removed 0, replaced 0" in result.output
    after = open_live(index_dir)
    assert after.index.meta["source"]["root"] == str(new_root.resolve())
    assert after.keys[: len(before)].tolist() == before.keys.tolist()  # items kept their numbers
    # Every reader of the index sees the new place: the API's load, the service's images.
    assert Retriever.load(index_dir).index.meta["source"]["root"] == str(new_root.resolve())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    from quantrieve.serve import create_app

    shutil.rmtree(tmp_path / "moved" / "photos" / "high")  # only the new place has "low" now
    low_item = int(after.keys[after.index.ids.index("low/00.png")])
    with TestClient(create_app(index_dir)) as client:
        assert client.get(f"/items/{low_item}/image").status_code == 200
    with pytest.raises(QuantrieveError, match="no such folder"):
        sync_folder(index_dir, folder=tmp_path / "nowhere")


@pytest.mark.slow
def test_a_sync_killed_before_its_commit_loses_nothing(folder_index: Path, tmp_path: Path) -> None:
    """SIGKILL between a sync's new segment file and its manifest: the index opens as it was,
    the orphan file is cleared, and the next sync adds the files."""
    import os
    import signal
    import subprocess
    import sys
    import time

    index_dir = Path(shutil.copytree(folder_index, tmp_path / "index"))
    sync_folder(index_dir, workers=1)  # in step with the folder (earlier tests changed it)
    root = Path(open_live(index_dir).index.meta["source"]["root"])
    manifest = index_dir / "segments" / "manifest.json"
    before, keys = manifest.read_bytes(), open_live(index_dir).keys.tolist()
    new = [root / "high" / f"killed-{i}.png" for i in range(3)]
    try:
        for i, path in enumerate(new):
            photo(path, 1, 5100 + i)
        code = "import sys; from quantrieve.cli import main; sys.argv[0] = 'quantrieve'; main()"
        env = {**os.environ, "QUANTRIEVE_TEST_COMMIT_DELAY": "60"}
        process = subprocess.Popen(
            [sys.executable, "-c", code, "sync", str(index_dir), "--device", "cpu"], env=env
        )
        named = {s["file"] for s in json.loads(before)["segments"]}
        deadline = time.monotonic() + 120
        orphan = []
        while not orphan and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.1)
            orphan = [p for p in (index_dir / "segments").glob("seg-*.npz") if p.name not in named]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert orphan, "the sync never wrote its segment"
        assert manifest.read_bytes() == before
        assert open_live(index_dir).keys.tolist() == keys  # nothing half-done is visible
        report = sync_folder(index_dir, workers=1)
        assert len(report.added) == 3
        named = {s["file"] for s in json.loads(manifest.read_bytes())["segments"]}
        assert {p.name for p in (index_dir / "segments").glob("seg-*.npz")} == named
    finally:
        for path in new:
            path.unlink(missing_ok=True)


def test_sync_of_an_index_refined_by_the_backbone_keeps_its_vectors(
    folder_index: Path, tmp_path: Path
) -> None:
    """A folder index encoded with --refine-depth (backbone vectors by default): synced files
    carry their unit backbone vectors, and a synced file, as a query, finds itself first."""
    index_dir = tmp_path / "refined"
    run = folder_index.parent / "run"
    result = CliRunner().invoke(
        app, ["encode", str(run), "--out", str(index_dir), "--refine-depth", "20"]
    )
    assert result.exit_code == 0, result.output
    live = open_live(index_dir)
    assert live.index.refine_source == "backbone"
    root = Path(live.index.meta["source"]["root"])
    copy = tmp_path / "photos"
    shutil.copytree(root, copy)
    CliRunner().invoke(app, ["sync", str(index_dir), str(copy)], catch_exceptions=False)
    photo(copy / "high" / "new.png", 1, 9001)
    assert sync_folder(index_dir, workers=1).added
    live = open_live(index_dir)
    row = live.index.ids.index("high/new.png")
    retriever = Retriever.load(index_dir, device="cpu")
    pixels = live.read_added(row)[0][None]
    _, vectors = retriever.embed_for_index(pixels)
    assert vectors is not None
    np.testing.assert_allclose(
        live.index.refine[row].astype(np.float32), vectors[0].numpy(), atol=1e-3
    )
    hit = retriever.search(pixels, k=1).hits[0][0]
    assert hit.id == "high/new.png"
