"""The encoder as ONNX: onnxruntime's embeddings match torch's, and search the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY
from typer.testing import CliRunner

import quantrieve as qr
from quantrieve.cli import app as cli
from quantrieve.data import read_dataset
from quantrieve.index.format import codebooks_sha256
from quantrieve.models.onnx_export import ONNX_TOLERANCE, export_onnx, onnx_embeddings
from quantrieve.models.retrieval import embed_images

# Each test exports with torch.onnx (seconds): left out of the fast subset.
pytestmark = pytest.mark.slow

pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def test_onnx_embeddings_search_like_torch(
    tiny_index: Path, tiny_fashion: Path, tmp_path: Path
) -> None:
    retriever = qr.Retriever.load(tiny_index, device="cpu")
    assert retriever.model is not None and retriever.index is not None
    done = export_onnx(retriever.model, tmp_path / "encoder.onnx")
    assert done.max_difference is not None
    assert done.max_difference <= ONNX_TOLERANCE * done.scale
    queries = read_dataset("fashion-mnist", tiny_fashion)["test"].images
    assert queries.shape[1:] == (TINY.size, TINY.size, 1)
    # torch in float32 (the export's arithmetic; encode uses autocast only for amp-trained runs)
    want = embed_images(retriever.model, queries, torch.device("cpu"), amp=False).numpy()
    got = onnx_embeddings(done.path, queries)
    assert got is not None and got.shape == want.shape == (TINY.test, TINY.dim)
    np.testing.assert_allclose(got, want, rtol=0, atol=ONNX_TOLERANCE * np.abs(want).max())
    index = retriever.index
    a = index.search(torch.from_numpy(want), 10, refine_depth=0)
    b = index.search(torch.from_numpy(got), 10, refine_depth=0)
    assert torch.equal(a[1], b[1])
    # A batch size the example never had: the batch axis is dynamic.
    assert onnx_embeddings(done.path, queries[:1]).shape == (1, TINY.dim)


def test_the_command_writes_the_file_with_its_index_named(tiny_index: Path, tmp_path: Path):
    out = tmp_path / "encoder.onnx"
    done = CliRunner().invoke(cli, ["export-onnx", str(tiny_index), str(out)])
    assert done.exit_code == 0, done.output
    assert "onnxruntime matches torch" in done.output
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    index = qr.PQIndex.load(tiny_index)
    assert meta["quantrieve.codebooks_sha256"] == codebooks_sha256(index.codebooks)
    assert meta["quantrieve.image_size"] == str(TINY.size)
    again = CliRunner().invoke(cli, ["export-onnx", str(tiny_index), str(out)])
    assert again.exit_code != 0 and "overwrite" in str(again.exception)
