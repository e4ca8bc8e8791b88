"""A tiny train -> encode -> evaluate -> search -> export run through the real CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from conftest import TINY, TINY_RUN, as_sets
from typer.testing import CliRunner

from quantrieve import Retriever
from quantrieve.cli import app, main
from quantrieve.cli.terminal import console, print_epoch
from quantrieve.index import PQIndex
from quantrieve.index.faiss_export import to_faiss
from quantrieve.train.trainer import EpochSummary

DEMO = [*TINY_RUN, f"model.num_books={TINY.books}", "eval.topk=50", "eval.precision_at=[5]"]


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def trained(tiny_run: Path, tiny_index: Path, tiny_fashion: Path) -> dict[str, Path]:
    """The shared tiny run and its index (trained and encoded through the CLI): read only."""
    return {"run": tiny_run, "index": tiny_index, "data": tiny_fashion}


def test_index_directory_holds_codes_and_metadata(trained: dict[str, Path]) -> None:
    index = PQIndex.load(trained["index"])
    meta = json.loads((trained["index"] / "index.json").read_text())
    assert meta["format"] == "quantrieve-pq-index" and meta["version"] == 2
    assert meta["bits"] == TINY.bits and meta["num_items"] == TINY.train and meta["has_model"]
    assert index.codes.dtype == np.uint8 and index.codes.shape == (TINY.train, TINY.books)
    assert index.labels is not None and index.labels.shape == (TINY.train, TINY.classes)
    assert index.ids[0] == "train:0"


def test_evaluate_json_reports_every_number(trained: dict[str, Path], tmp_path: Path) -> None:
    plot = tmp_path / "pr.png"
    out = _invoke(
        "evaluate",
        str(trained["index"]),
        "--data-dir",
        str(trained["data"]),
        "--topk",
        "50",
        "--precision-at",
        "5,20",
        "--plot",
        str(plot),
        "--json",
    )
    result = json.loads(out)
    assert result["num_queries"] == TINY.test and result["num_database"] == TINY.train
    assert 0 <= result["map_at_k"] <= 1 and set(result["precision_at"]) == {"5", "20"}
    assert len(result["pr_precision"]) == len(result["pr_recall"]) > 1
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_evaluate_pr_queries_sets_the_curve_sample(trained: dict[str, Path]) -> None:
    """--pr-queries picks how many evenly spaced queries the PR curve ranks in full; mAP and
    precision@N still use every query."""
    args = ["evaluate", str(trained["index"]), "--data-dir", str(trained["data"]), "--json"]
    every = json.loads(_invoke(*args, "--pr-queries", "0"))
    few = json.loads(_invoke(*args, "--pr-queries", "6"))
    assert every["extra"]["pr_queries"] + every["extra"]["pr_queries_without_relevant"] == TINY.test
    assert few["extra"]["pr_queries"] + few["extra"]["pr_queries_without_relevant"] == 6
    assert few["map_at_k"] == every["map_at_k"]
    assert few["pr_precision"] != every["pr_precision"]


def test_search_returns_ranked_hits(trained: dict[str, Path]) -> None:
    out = _invoke(
        "search",
        str(trained["index"]),
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        str(trained["data"]),
        "--items",
        "0,3",
        "-k",
        "5",
        "--json",
    )
    hits = json.loads(out)
    assert [h["query"] for h in hits] == ["test:0", "test:3"]
    for query in hits:
        distances = [r["distance"] for r in query["results"]]
        assert len(distances) == 5 and distances == sorted(distances)
    table = _invoke(
        "search",
        str(trained["index"]),
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        str(trained["data"]),
        "--items",
        "1",
        "-k",
        "3",
    )
    assert "query test:1" in table


def test_search_with_image_file(trained: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "q.png"
    Image.fromarray(np.full((20, 30), 128, dtype=np.uint8)).save(path)
    out = _invoke("search", str(trained["index"]), "--image", str(path), "-k", "2", "--json")
    assert len(json.loads(out)[0]["results"]) == 2


def test_faiss_export_ranks_like_sqeuclidean_adc(trained: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "index.faiss"
    _invoke("export-faiss", str(trained["index"]), str(out))
    index = PQIndex.load(trained["index"])
    exported = faiss.read_index(str(out))
    assert exported.ntotal == len(index)
    rng = np.random.default_rng(0)
    books, _, sub_dim = index.codebooks.shape
    queries = torch.from_numpy(rng.normal(size=(7, books * sub_dim)).astype(np.float32))
    ours_d, _ = index.search(queries, k=10, distance="sqeuclidean")
    theirs_d, _ = exported.search(queries.numpy(), 10)
    np.testing.assert_allclose(theirs_d, ours_d.numpy(), rtol=1e-4, atol=1e-4)
    fast = to_faiss(index, fast_scan=True)
    assert fast.ntotal == len(index)


def test_embeddings_are_reproducible(trained: dict[str, Path]) -> None:
    images = np.zeros((3, TINY.size, TINY.size, 1), dtype=np.uint8)
    a = Retriever.load(trained["index"]).embed(images)
    b = Retriever.load(trained["index"]).embed(images)
    np.testing.assert_array_equal(a, b)


def test_images_are_embedded_in_the_precision_the_run_trained_in(trained: dict[str, Path]) -> None:
    images = np.random.default_rng(0).integers(0, 255, (4, TINY.size, TINY.size, 1), np.uint8)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    retriever = Retriever.load(trained["index"])
    assert retriever.amp  # the tiny run trained with train.amp (the default)
    with torch.no_grad():
        mixed, exact = retriever.model.embed(x, amp=True), retriever.model.embed(x)
    assert not torch.equal(mixed, exact)  # bfloat16 autocast changes the numbers
    np.testing.assert_array_equal(retriever.embed(images), mixed.numpy())
    retriever.config.train.amp = False  # a run trained in float32 is embedded in float32
    np.testing.assert_array_equal(retriever.embed(images), exact.numpy())
    f, _ = retriever.embed_for_index(images)
    np.testing.assert_array_equal(f.numpy(), exact.numpy())
    codes = retriever.encode(images)
    np.testing.assert_array_equal(codes, retriever.model.quantizer.encode(exact).numpy())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--set", "train.epochs=zero"], "config key 'train.epochs': expected int"),
        (["train", "--set", "model.colour=1"], "unknown config key 'model.colour'"),
        (["train", "--preset", "nope"], "unknown preset 'nope'"),
        (
            ["train", "--preset", "fashion-mnist-cpu", "--resume"],
            "--resume continues with the run's saved config.json; drop --preset / --config",
        ),
        (["train", "--bits", "30"], "bits (model.bits) 30 is not a multiple of log2(K) = 4"),
        (["train", "--bits", "0"], "bits (model.bits) must be a positive multiple of log2(K)"),
        (["train", "--bits", "-8"], "bits (model.bits) must be a positive multiple of log2(K)"),
        (["train", "--set", "model.bits=10"], "bits (model.bits) 10 is not a multiple"),
        (
            ["encode", "/nonexistent/run", "--out", "/nonexistent/ix", "--distance", "foo"],
            "--distance must be one of l2, sqeuclidean, got 'foo'",
        ),
        (["evaluate", "/nonexistent/index"], "/nonexistent/index: not found"),
        (["evaluate", "/tmp"], "/tmp: not an index directory"),
        (
            ["train", "--data-dir", "/nonexistent/data"],
            "/nonexistent/data: dataset folder not found",
        ),
    ],
)
def test_user_errors_are_one_line_and_exit_2(
    args: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    tmp_path: Path,
) -> None:
    monkeypatch.setattr(
        sys,
        "argv",
        ["quantrieve", *args, *(["--out", str(tmp_path / "r")] if args[0] == "train" else [])],
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split())
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("preset", "noted"), [("fashion-mnist-cpu", True), ("small-collection-cpu", False)]
)
def test_a_preset_made_for_a_named_dataset_is_noted_on_a_folder(
    preset: str,
    noted: bool,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    tmp_path: Path,
) -> None:
    """A user's folder trained with a preset made for another dataset is told which preset is
    made for folders (before the folder is read: here it does not exist)."""
    args = ["train", "--preset", preset, "--dataset", "image-folder", "--data-dir", "/nonexistent"]
    monkeypatch.setattr(sys, "argv", ["quantrieve", *args, "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit):
        main()
    err = " ".join(capsys.readouterr().err.split())
    note = (
        "note: the fashion-mnist-cpu preset was made for the fashion-mnist dataset (its "
        "schedule, batch and validation queries); for a folder of your own images, --preset "
        "small-collection-cpu is the one measured on folders"
    )
    assert (note in err) is noted and ("note:" in err) is noted
    assert "/nonexistent" in err  # then the folder is read, and its error said


# Slow: its own training run plus an 88-panel matplotlib grid (4-7 s); the grid drawing is in the
# fast subset through `search --plot` (test_own_images), the demo's refusals through test_outputs.
@pytest.mark.slow
def test_demo_writes_table_grid_and_curves(tiny_fashion: Path, tmp_path: Path) -> None:
    sets = as_sets(DEMO)
    out = tmp_path / "demo"
    printed = _invoke("demo", "--data-dir", str(tiny_fashion), "--out", str(out), *sets)
    assert "HQC" in printed and "faiss PQ on raw pixels" in printed
    summary = json.loads((out / "results.json").read_text())
    assert [row["bits"] for row in summary["rows"]] == [TINY.bits, TINY.bits]
    assert all(0 <= row["map"] <= 1 for row in summary["rows"])
    for name in ("retrieval_grid.png", "pr_curve.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert (out / "index" / "codes.npy").is_file()


def test_each_epoch_reports_validation_p_at_10_beside_map(trained: dict[str, Path]) -> None:
    records = [json.loads(line) for line in (trained["run"] / "log.jsonl").open()]
    validations = {r["epoch"]: r for r in records if r["kind"] == "validation"}
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert epochs and all(r["val_p10"] is not None for r in epochs)
    for r in epochs:  # the epoch line's P@10 is the validation record's
        assert r["val_p10"] == validations[r["epoch"]]["precision_at"]["10"]
    summary = EpochSummary(3, 1.0, 2.0, 10.0, 0.5, 3, 0.5, val_p10=0.625)
    with console.capture() as captured:
        print_epoch(summary, 5)
    assert "val mAP 0.5000  P@10 0.6250" in captured.get()
