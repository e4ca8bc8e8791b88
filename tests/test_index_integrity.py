"""Index integrity: an index whose files were replaced or edited after encoding is refused."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import embed_queries, encode_index

from quantrieve.config import ModelConfig
from quantrieve.data import ImageSet
from quantrieve.errors import QuantrieveWarning
from quantrieve.index.format import IndexFormatError
from quantrieve.index.model_check import model_path, verify_index_model
from quantrieve.index.pq_index import PQIndex
from quantrieve.models.retrieval import RetrievalModel

CONFIG = ModelConfig(width=4, proj_hidden=16, num_books=2, num_codewords=16, codeword_dim=4)


def _model(path: Path, seed: int) -> Path:
    """An untrained model (what matters here is that two seeds give other codebooks)."""
    torch.manual_seed(seed)
    RetrievalModel(CONFIG, 8, 1, [0.5], [0.25]).save(path, {"epoch": 1})
    return path


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    database = ImageSet(
        rng.integers(0, 256, (30, 8, 8, 1), dtype=np.uint8),
        rng.random((30, 3)) < 0.5,
        [f"item{i}" for i in range(30)],
        ["a", "b", "c"],
    )
    out = tmp_path / "index"
    with warnings.catch_warnings():  # an untrained model's codes collapse: not the point here
        warnings.simplefilter("ignore")
        model = _model(tmp_path / "run-a.pt", 0)
        encode_index(model, database, out, device="cpu")
    return out


QUERIES = np.zeros((2, 8, 8, 1), dtype=np.uint8)


def _edit_meta(index_dir: Path, **changes: object) -> None:
    path = index_dir / "index.json"
    meta = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    path.write_text(json.dumps(meta))


def test_index_json_records_hashes_and_a_clean_index_loads(index_dir: Path) -> None:
    meta = json.loads((index_dir / "index.json").read_text())
    assert meta["version"] == 2
    assert len(meta["codebooks_sha256"]) == 64 and len(meta["model_sha256"]) == 64
    assert set(meta["checksums"]) == {"codes.npy", "ids.txt", "labels.npy", "content.npy"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        index = PQIndex.load(index_dir)
        assert model_path(index_dir) == index_dir / "model.pt"
    assert len(index) == 30 and index.meta["model"]["epoch"] == 1
    assert "checksums" not in index.meta  # format keys are not carried into a re-save
    assert embed_queries(index_dir, QUERIES, "cpu").shape == (2, 8)


def test_model_from_another_run_is_refused(index_dir: Path, tmp_path: Path) -> None:
    """The reported case: model.pt replaced by another run's, which evaluated silently at 0.13."""
    shutil.copyfile(_model(tmp_path / "run-b.pt", 1), index_dir / "model.pt")
    with pytest.raises(IndexFormatError, match="file hash differs from model_sha256") as info:
        embed_queries(index_dir, QUERIES, "cpu")
    assert "not the model this index was encoded with" in str(info.value)
    assert "--overwrite" in str(info.value)
    # Even with the hash made to match, the quantizer codebooks give the swap away.
    _edit_meta(index_dir, model_sha256=None)
    with pytest.raises(IndexFormatError, match=r"quantizer codebooks \(2, 16, 4\) differ from"):
        model_path(index_dir)
    # The right model back: accepted again.
    shutil.copyfile(tmp_path / "run-a.pt", index_dir / "model.pt")
    assert verify_index_model(index_dir) == index_dir / "model.pt"


@pytest.mark.parametrize(
    ("key", "value"), [("bits", 16), ("num_books", 4), ("num_codewords", 256), ("codeword_dim", 8)]
)
def test_edited_code_geometry_in_index_json_is_refused(
    index_dir: Path, key: str, value: int
) -> None:
    _edit_meta(index_dir, **{key: value})
    with pytest.raises(IndexFormatError, match=f"index.json: '{key}' is {value} but codebooks"):
        PQIndex.load(index_dir)


@pytest.mark.parametrize("name", ["codes.npy", "labels.npy", "ids.txt"])
def test_a_changed_byte_in_a_data_file_is_refused(index_dir: Path, name: str) -> None:
    path = index_dir / name
    raw = bytearray(path.read_bytes())
    raw[-2] ^= 1  # stays a valid file: a code < K, a label 0/1, a character of an id
    path.write_bytes(bytes(raw))
    with pytest.raises(IndexFormatError, match=f"{name}: checksum differs from the one in index"):
        PQIndex.load(index_dir)
    assert len(PQIndex.load(index_dir, verify=False)) == 30  # opt-out, e.g. huge mmap indexes


def test_edited_codebooks_are_refused(index_dir: Path) -> None:
    codebooks = np.load(index_dir / "codebooks.npy")
    codebooks[0, 0, 0] += 1e-3
    np.save(index_dir / "codebooks.npy", codebooks)
    with pytest.raises(IndexFormatError, match="codebooks differ from codebooks_sha256"):
        PQIndex.load(index_dir, verify=False)


def test_version_1_index_loads_with_a_note_and_its_model_is_still_checked(
    index_dir: Path, tmp_path: Path
) -> None:
    _edit_meta(index_dir, version=1, codebooks_sha256=None, model_sha256=None, checksums=None)
    with pytest.warns(QuantrieveWarning, match="index version 1 records no checksums"):
        index = PQIndex.load(index_dir)
    assert len(index) == 30 and index.codes.shape == (30, 2)
    assert embed_queries(index_dir, QUERIES, "cpu").shape == (2, 8)
    _edit_meta(index_dir, bits=12)
    with (
        pytest.raises(IndexFormatError, match="'bits' is 12"),
        pytest.warns(QuantrieveWarning),
    ):
        PQIndex.load(index_dir)
    _edit_meta(index_dir, bits=8)  # loading checks index.json first: put it right again
    shutil.copyfile(_model(tmp_path / "run-b.pt", 1), index_dir / "model.pt")
    with pytest.raises(IndexFormatError, match=r"differ from codebooks\.npy"):
        embed_queries(index_dir, QUERIES, "cpu")


def test_a_file_that_is_no_model_is_refused(index_dir: Path) -> None:
    torch.save({"state_dict": {"w": torch.zeros(2)}}, index_dir / "model.pt")
    _edit_meta(index_dir, model_sha256=None)
    with pytest.raises(IndexFormatError, match="not a quantrieve model"):
        model_path(index_dir)


def test_class_names_cut_in_index_json_are_refused(index_dir: Path) -> None:
    """Cutting class_names gave an IndexError traceback when results were labelled."""
    _edit_meta(index_dir, class_names=["a", "b"])
    with pytest.raises(IndexFormatError, match="2 class names for 3 columns of labels"):
        PQIndex.load(index_dir)
