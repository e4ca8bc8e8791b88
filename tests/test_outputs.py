"""No command deletes or overwrites what is not its own output of the same kind.

Each test puts something of the user's where an output would go (a training run, a folder of
runs, a file, a folder with a user file) and checks the command refuses with a message and that
every byte of the user's is still there.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, TINY_RUN, as_sets

from quantrieve.cli import main
from quantrieve.errors import OutputError
from quantrieve.index import PQIndex
from quantrieve.runtime.outputs import OutputKind, replace_folder

SETS = as_sets(
    [*TINY_RUN, f"model.num_books={TINY.books}", "eval.topk=50", "eval.precision_at=[5]"]
)


def _cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple:
    """Run the real entry point; returns (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["quantrieve", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    err = " ".join(capsys.readouterr().err.split())
    return code, err


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def runs(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder ``runs/`` holding one trained run ``runs/r1`` (a copy of the shared tiny run,
    trained by ``quantrieve train``) with a user note next to it."""
    root = tmp_path_factory.mktemp("outputs") / "runs"
    shutil.copytree(tiny_run, root / "r1")
    (root / "notes.txt").write_text("my notes\n")
    return root


def test_encode_into_a_training_run_is_refused(
    runs: Path, tiny_fashion: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    before = _snapshot(runs)
    for target in (runs / "r1", runs):
        code, err = _cli(
            monkeypatch,
            capsys,
            "encode",
            str(runs / "r1"),
            "--out",
            str(target),
            "--data-dir",
            str(tiny_fashion),
        )
        assert code == 2, err
        assert "is not empty and is not a quantrieve index" in err
        assert "Traceback" not in err
    assert _snapshot(runs) == before


def test_encode_onto_a_file_or_a_user_folder_is_refused(
    runs: Path,
    tiny_fashion: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    a_file = tmp_path / "photo.jpg"
    a_file.write_bytes(b"not really a photo")
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "keep.txt").write_text("keep me")
    for target in (a_file, folder):
        code, err = _cli(
            monkeypatch,
            capsys,
            "encode",
            str(runs / "r1"),
            "--out",
            str(target),
            "--data-dir",
            str(tiny_fashion),
            "--overwrite",
        )
        assert code == 2, err
    assert a_file.read_bytes() == b"not really a photo"
    assert (folder / "keep.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "photo.jpg"]  # no .old, no tmp


def test_existing_index_is_replaced_only_with_overwrite(
    runs: Path,
    tiny_fashion: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    out = tmp_path / "index"
    args = ["encode", str(runs / "r1"), "--out", str(out), "--data-dir", str(tiny_fashion)]
    assert _cli(monkeypatch, capsys, *args)[0] == 0
    first = _snapshot(out)
    code, err = _cli(monkeypatch, capsys, *args)
    assert code == 2 and "already holds a quantrieve index; pass --overwrite" in err
    assert _snapshot(out) == first
    assert _cli(monkeypatch, capsys, *args, "--overwrite")[0] == 0
    assert PQIndex.load(out).codes.shape == (TINY.train, TINY.books)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]


def test_a_failed_replacement_keeps_the_old_index(tmp_path: Path) -> None:
    index = PQIndex(
        codebooks=np.zeros((2, 4, 3), np.float32), codes=np.zeros((3, 2), np.uint8), ids=list("abc")
    )
    index.save(tmp_path / "ix")
    before = _snapshot(tmp_path / "ix")

    def crash(tmp: Path) -> None:
        (tmp / "codes.npy").write_bytes(b"half")
        raise RuntimeError("disk full")

    kind = OutputKind("quantrieve index", "index.json")
    with pytest.raises(RuntimeError, match="disk full"):
        replace_folder(tmp_path / "ix", kind, crash, overwrite=True)
    assert _snapshot(tmp_path / "ix") == before
    assert [p.name for p in tmp_path.iterdir()] == ["ix"]


def test_index_with_foreign_files_is_not_replaced(tmp_path: Path) -> None:
    index = PQIndex(
        codebooks=np.zeros((2, 4, 3), np.float32), codes=np.zeros((3, 2), np.uint8), ids=list("abc")
    )
    index.save(tmp_path / "ix")
    (tmp_path / "ix" / "README.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"README\.txt"):
        index.save(tmp_path / "ix", overwrite=True)
    assert (tmp_path / "ix" / "README.txt").read_text() == "mine"


def test_files_respect_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        index = PQIndex(
            codebooks=np.zeros((2, 4, 3), np.float32),
            codes=np.zeros((3, 2), np.uint8),
            ids=list("abc"),
        )
        index.save(tmp_path / "ix")
    finally:
        os.umask(old)
    assert (tmp_path / "ix").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "ix" / "codes.npy").stat().st_mode & 0o777 == 0o644


def test_train_into_a_user_folder_is_refused(
    tiny_fashion: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    (tmp_path / "config.json").write_text('{"mine": true}')
    code, err = _cli(
        monkeypatch, capsys, "train", "--out", str(tmp_path), "--data-dir", str(tiny_fashion), *SETS
    )
    assert code == 2 and "is not a training run" in err
    assert (tmp_path / "config.json").read_text() == '{"mine": true}'
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_export_faiss_never_replaces_a_foreign_file(
    tiny_index: Path,
    tiny_fashion: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    index_dir = Path(shutil.copytree(tiny_index, tmp_path / "index"))
    target = tmp_path / "db.faiss"
    target.write_text("user data")
    for extra in ([], ["--overwrite"]):
        code, err = _cli(monkeypatch, capsys, "export-faiss", str(index_dir), str(target), *extra)
        assert code == 2, err
    assert target.read_text() == "user data"
    fresh = tmp_path / "fresh.faiss"
    assert _cli(monkeypatch, capsys, "export-faiss", str(index_dir), str(fresh))[0] == 0
    code, err = _cli(monkeypatch, capsys, "export-faiss", str(index_dir), str(fresh))
    assert code == 2 and "--overwrite" in err
    assert (
        _cli(monkeypatch, capsys, "export-faiss", str(index_dir), str(fresh), "--overwrite")[0] == 0
    )


def test_evaluate_plot_does_not_replace_a_file(
    tiny_index: Path,
    tiny_fashion: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    index_dir = Path(shutil.copytree(tiny_index, tmp_path / "index"))
    plot = tmp_path / "figure.png"
    plot.write_bytes(b"my figure")
    code, err = _cli(
        monkeypatch,
        capsys,
        "evaluate",
        str(index_dir),
        "--data-dir",
        str(tiny_fashion),
        "--topk",
        "50",
        "--plot",
        str(plot),
    )
    assert code == 2 and "already exists" in err
    assert plot.read_bytes() == b"my figure"


@pytest.mark.parametrize("command", ["benchmark", "demo"])
def test_benchmark_and_demo_refuse_a_foreign_folder(
    command: str,
    tiny_fashion: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    (tmp_path / "thesis.tex").write_text("chapter 1")
    args = [command, "--out", str(tmp_path), "--data-dir", str(tiny_fashion), *SETS]
    if command == "benchmark":
        args += ["--methods", "pq", "--bits", "16"]
    code, err = _cli(monkeypatch, capsys, *args)
    assert code == 2 and "is not empty and is not a" in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.tex"]


def test_the_umask_is_read_without_being_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    from quantrieve.runtime import atomic

    if not sys.platform.startswith("linux"):
        pytest.skip("/proc/self/status is Linux's")
    old = os.umask(0o027)
    try:

        def refuse(mask: int) -> int:
            raise AssertionError("os.umask called: another thread would see a zero mask")

        monkeypatch.setattr(atomic.os, "umask", refuse)
        assert atomic.current_umask() == 0o027
    finally:
        monkeypatch.undo()
        os.umask(old)


def test_an_atomic_write_syncs_its_folder_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from quantrieve.runtime import atomic

    synced: list[tuple[Path, bool]] = []
    target = tmp_path / "file.txt"
    monkeypatch.setattr(
        atomic, "fsync_dir", lambda folder: synced.append((Path(folder), target.exists()))
    )
    atomic.atomic_write_text("x", target)
    assert synced == [(tmp_path, True)]  # after the rename, on the file's own folder
