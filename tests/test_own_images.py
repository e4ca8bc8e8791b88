"""A user's own image folder, end to end through the command line and the Python API: held-out
queries, defaults taken from the run, labels matched by class name, a foreign model refused."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, TINY_RUN
from PIL import Image
from typer.testing import CliRunner

import quantrieve as qr
from quantrieve.cli import app

CLASSES = ["circle", "cross", "square", "stripes"]
ROOT = Path(__file__).resolve().parents[1]


def make_folder(root: Path, per_class: int = 30, size: int = 16, seed: int = 0) -> Path:
    """Class sub-folders of PNGs whose class is a bright bar's position, plus noise."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = rng.integers(0, 70, (size, size, 3)).astype(np.uint8)
            row = c * (size - 3) // (len(CLASSES) - 1)
            image[row : row + 3, :, :] = 230
            Image.fromarray(image).save(root / name / f"{i:03d}.png")
    return root


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _refused(*args: str) -> str:
    """The message of the user error a command stops with (printed as one line by main)."""
    result = CliRunner().invoke(app, list(args))
    assert isinstance(result.exception, qr.QuantrieveError), result.output
    return str(result.exception)


TINY_SETS = [x for item in [*TINY_RUN, "model.num_books=4"] for x in ("--set", item)]


@pytest.fixture(scope="module")
def own_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("own")
    photos = make_folder(base / "photos")
    run = base / "run"
    _invoke(
        "train",
        "--dataset",
        "image-folder",
        "--data-dir",
        str(photos),
        "--image-size",
        "16",
        "--holdout",
        "20",
        "--out",
        str(run),
        *TINY_SETS,
    )
    _invoke("encode", str(run), "--out", str(run / "index"))
    return {"photos": photos, "run": run, "index": run / "index"}


def test_held_out_queries_are_saved_and_never_indexed(own_run: dict[str, Path]) -> None:
    assert (own_run["run"] / "holdout.npz").is_file()
    config = json.loads((own_run["run"] / "config.json").read_text())
    assert config["data"]["root"] == str(own_run["photos"].resolve())
    index = qr.PQIndex.load(own_run["index"])
    assert len(index) == 100  # 120 images, 20 held out
    assert index.class_names == CLASSES
    meta = json.loads((own_run["index"] / "index.json").read_text())
    assert meta["source"]["run_dir"] == str(own_run["run"].resolve())


def test_evaluate_defaults_to_the_held_out_queries(own_run: dict[str, Path]) -> None:
    out = _invoke("evaluate", str(own_run["index"]), "--topk", "50", "--json")
    result = json.loads(out[out.index("{") :])
    assert result["num_queries"] == 20 and result["num_database"] == 100
    index = qr.PQIndex.load(own_run["index"])
    held_out = set(qr.read_dataset("image-folder", own_run["photos"], 16)["all"].ids) - set(
        index.ids
    )
    assert len(held_out) == 20


def test_search_takes_several_image_files(own_run: dict[str, Path]) -> None:
    files = sorted((own_run["photos"] / "cross").glob("*.png"))[:2]
    out = _invoke("search", str(own_run["index"]), *map(str, files), "-k", "3", "--json")
    payload = json.loads(out[out.index("[") :])
    assert [q["query"] for q in payload] == [str(f) for f in files]
    assert all(len(q["results"]) == 3 for q in payload)


def test_renamed_classes_are_refused_not_scored_by_position(
    own_run: dict[str, Path], tmp_path: Path
) -> None:
    renamed = tmp_path / "renamed"
    for i, name in enumerate(CLASSES):
        shutil.copytree(own_run["photos"] / name, renamed / f"class{i}")
    message = _refused(
        "evaluate", str(own_run["index"]), "--data-dir", str(renamed), "--part", "all"
    )
    assert "the queries' classes are not the index's" in message
    assert "class0" in message and "circle" in message


def test_a_subset_of_classes_is_matched_by_name(own_run: dict[str, Path], tmp_path: Path) -> None:
    subset = tmp_path / "subset"
    for name in ("square", "cross"):  # sorted: cross, square = index columns 1 and 2
        shutil.copytree(own_run["photos"] / name, subset / name)
    retriever = qr.Retriever.load(own_run["index"])
    queries = qr.read_dataset("image-folder", subset, 16)["all"]
    assert queries.class_names == ["cross", "square"]
    aligned = qr.api.align_labels(queries.labels, queries.class_names, retriever.index)
    assert aligned.shape[1] == 4
    np.testing.assert_array_equal(aligned[:, 1], queries.labels[:, 0])
    np.testing.assert_array_equal(aligned[:, 2], queries.labels[:, 1])
    assert not aligned[:, [0, 3]].any()
    assert 0 <= retriever.evaluate(queries, k=20).map_at_k <= 1


def test_a_model_from_another_run_is_refused(own_run: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other"
    _invoke(
        "train",
        "--dataset",
        "image-folder",
        "--data-dir",
        str(own_run["photos"]),
        "--image-size",
        "16",
        "--out",
        str(other),
        *TINY_SETS,
        "--set",
        "train.seed=7",
    )
    index = tmp_path / "index"
    shutil.copytree(own_run["index"], index)
    shutil.copyfile(other / "model.pt", index / "model.pt")
    with pytest.raises(qr.QuantrieveError, match="not the model this index was encoded with"):
        qr.Retriever.load(index)


@pytest.mark.slow
def test_the_readme_python_example_runs_as_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "the README has no Python example"
    example = blocks[0]
    make_folder(tmp_path / "photos", per_class=60, size=16)
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {})
    assert (tmp_path / "photos-index" / "index.json").is_file()
    index = qr.PQIndex.load(tmp_path / "photos-index")
    assert len(index) == 240 - 40 and index.bits == 32


def test_a_query_in_the_index_is_not_its_own_hit(own_run: dict[str, Path]) -> None:
    retriever = qr.Retriever.load(own_run["run"])
    photos = qr.read_dataset("image-folder", own_run["photos"], 16)["all"]
    retriever.build_index(photos)
    with pytest.warns(qr.QuantrieveWarning, match="120 of 120 queries are themselves in the index"):
        retriever.evaluate(photos, k=20, precision_at=[1])
    # Other images under the same ids (another folder) are not taken for the queries.
    renamed = qr.ImageSet(
        np.ascontiguousarray(np.maximum(photos.images, 1) - 1),  # other pixels, same ids
        photos.labels,
        photos.ids,
        photos.class_names,
    )
    with warnings.catch_warnings():
        # The tiny model's codes are also flagged as collapsed; only a self-match would fail.
        warnings.filterwarnings("error", "(?s).*themselves in the index", qr.QuantrieveWarning)
        retriever.evaluate(renamed, k=20)


def test_excluded_pairs_leave_their_query_s_ranking() -> None:
    from quantrieve.evaluate import evaluate_codes

    rng = np.random.default_rng(0)
    codebooks = rng.normal(size=(4, 16, 3)).astype(np.float32)
    codes = rng.integers(0, 16, (50, 4)).astype(np.uint8)
    # Queries are the items' own reconstructions: each item is its query's nearest neighbour.
    f = torch.from_numpy(np.concatenate([codebooks[m, codes[:, m]] for m in range(4)], axis=1))
    labels = np.eye(5, dtype=bool)[np.arange(50) % 5]
    naive = evaluate_codes(f, codebooks, codes, labels, labels, 10, [1])
    pairs = np.stack([np.arange(50), np.arange(50)], axis=1)
    excluded = evaluate_codes(f, codebooks, codes, labels, labels, 10, [1], exclude=pairs)
    assert naive.precision_at[1] == 1.0
    assert excluded.precision_at[1] < 0.5 and excluded.map_at_k < naive.map_at_k


def test_embed_writes_query_embeddings_for_faiss(own_run: dict[str, Path], tmp_path: Path) -> None:
    files = sorted((own_run["photos"] / "square").glob("*.png"))[:3]
    out = tmp_path / "queries.npy"
    _invoke("embed", str(own_run["index"]), *map(str, files), "--out", str(out))
    saved = np.load(out)
    expected = qr.Retriever.load(own_run["index"]).embed(np.stack([_load(f) for f in files]))
    np.testing.assert_allclose(saved, expected, rtol=1e-6)
    assert (tmp_path / "queries.ids.txt").read_text().split() == [str(f) for f in files]
    assert "already exists" in _refused(
        "embed", str(own_run["index"]), str(files[0]), "--out", str(out)
    )


def _load(path: Path) -> np.ndarray:
    from quantrieve.data.images import load_image_file

    return load_image_file(path, 16, 3)


def test_search_draws_a_result_grid(own_run: dict[str, Path], tmp_path: Path) -> None:
    files = sorted((own_run["photos"] / "circle").glob("*.png"))[:2]
    grid = tmp_path / "grid.png"
    _invoke("search", str(own_run["index"]), *map(str, files), "-k", "4", "--grid", str(grid))
    assert grid.stat().st_size > 1000
    assert "already exists" in _refused(
        "search", str(own_run["index"]), str(files[0]), "--grid", str(grid)
    )


def test_pixel_baseline_on_the_run_s_own_images(own_run: dict[str, Path]) -> None:
    out = _invoke("baseline", "pq", "--run", str(own_run["run"]), "--bits", "16", "--json")
    result = json.loads(out[out.index("{") :])
    assert result["num_queries"] == 20 and result["num_database"] == 100  # held-out queries
    assert result["bits"] == TINY.bits and 0 <= result["map_at_k"] <= 1
