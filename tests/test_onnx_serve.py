"""A read-only service that embeds queries with the exported ONNX encoder (onnxruntime) and
searches with numpy: it runs without torch, and ranks as the torch service does."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")
from fastapi.testclient import TestClient

import quantrieve as qr
from quantrieve.data import read_dataset
from quantrieve.errors import QuantrieveError
from quantrieve.index.format import codebooks_sha256, image_fingerprints
from quantrieve.models.onnx_export import export_onnx, onnx_embeddings
from quantrieve.serve import ServeOptions, create_app

# Exports with torch.onnx and starts a process: left out of the fast subset.
pytestmark = pytest.mark.slow


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels[..., 0]).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def exported(tiny_index: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    retriever = qr.Retriever.load(tiny_index, device="cpu")
    path = tmp_path_factory.mktemp("onnx") / "encoder.onnx"
    export_onnx(retriever.model, path, codebooks_sha256(retriever.index.codebooks))
    return path


def _search(client: TestClient, images: np.ndarray, k: int = 10) -> list[list[int]]:
    out = []
    for pixels in images:
        got = client.post(
            "/search", files=[("images", ("q.png", _png(pixels), "image/png"))], data={"k": str(k)}
        )
        assert got.status_code == 200, got.text
        out.append([h["item"] for h in got.json()["queries"][0]["hits"]])
    return out


def test_the_onnx_service_ranks_like_numpy_search_of_onnx_embeddings(
    tiny_index: Path, tiny_fashion: Path, exported: Path
) -> None:
    queries = read_dataset("fashion-mnist", tiny_fashion)["test"].images[:12]
    options = ServeOptions(read_only=True, onnx=str(exported))
    with TestClient(create_app(tiny_index, options)) as client:
        got = _search(client, queries)
        stats = client.get("/stats").json()
        assert stats["image_size"] == TINY.size and stats["read_only"]
        assert (
            client.post(
                "/items", files=[("images", ("x.png", _png(queries[0]), "image/png"))]
            ).status_code
            == 403
        )
    index = qr.PQIndex.load(tiny_index)
    embeddings = onnx_embeddings(exported, queries)
    prints = None if index.content is None else image_fingerprints(queries)
    want = index.search_numpy(embeddings, 10, fingerprints=prints)[1]
    assert got == want.tolist()
    with TestClient(create_app(tiny_index, ServeOptions(read_only=True))) as client:
        torch_hits = _search(client, queries)
    # torch embeds with autocast: the top 10 agree but for near-ties
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, torch_hits, strict=True)])
    assert overlap >= 0.8


def test_onnx_needs_read_only_and_this_index_s_encoder(
    tiny_index: Path, exported: Path, tmp_path: Path
) -> None:
    with pytest.raises(QuantrieveError, match="--read-only"):
        create_app(tiny_index, ServeOptions(onnx=str(exported)))
    other = qr.PQIndex.load(tiny_index)
    other.codebooks = other.codebooks + 1.0
    other_dir = other.save(tmp_path / "other", model_file=tiny_index / "model.pt")
    with pytest.raises(QuantrieveError, match="other codebooks"):
        create_app(other_dir, ServeOptions(read_only=True, onnx=str(exported)))


def test_the_onnx_service_runs_where_torch_cannot_be_imported(
    tiny_index: Path, tiny_fashion: Path, exported: Path, tmp_path: Path
) -> None:
    """A process where importing torch fails (as on a serve-only install): the service starts,
    answers /health and a search by image, and never imports torch."""
    queries = read_dataset("fashion-mnist", tiny_fashion)["test"].images[:4]
    files = []
    for i, pixels in enumerate(queries):
        files.append(tmp_path / f"q{i}.png")
        files[-1].write_bytes(_png(pixels))
    script = textwrap.dedent(
        f"""
        import json, sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "kornia", "torchvision"):
                    raise ImportError(f"No module named {{name!r}}")
        sys.meta_path.insert(0, NoTorch())
        from fastapi.testclient import TestClient
        from quantrieve.serve import ServeOptions, create_app
        app = create_app({str(tiny_index)!r}, ServeOptions(read_only=True, onnx={str(exported)!r}))
        out = []
        with TestClient(app) as client:
            assert client.get("/health").status_code == 200
            for name in {[str(f) for f in files]!r}:
                with open(name, "rb") as handle:
                    got = client.post("/search", files=[("images", ("q.png", handle.read(),
                                      "image/png"))], data={{"k": "10"}})
                assert got.status_code == 200, got.text
                out.append([h["item"] for h in got.json()["queries"][0]["hits"]])
            metrics = client.get("/metrics").text
        assert 'torch_version="none"' in metrics or "torch_version" in metrics
        print(json.dumps({{"hits": out, "torch": "torch" in sys.modules}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["torch"] is False
    with TestClient(create_app(tiny_index, ServeOptions(read_only=True, onnx=str(exported)))) as c:
        assert result["hits"] == _search(c, queries)


def test_an_index_refined_by_the_backbone_is_served_by_onnx_too(
    tiny_index: Path, tiny_fashion: Path, exported: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from quantrieve.cli import app
    from quantrieve.models.onnx_runtime import OnnxEncoder

    index_dir = tmp_path / "backbone"
    run = str(tiny_index.parent / "run")
    args = ["encode", run, "--out", str(index_dir), "--refine-depth", "20"]
    result = CliRunner().invoke(app, [*args, "--refine-source", "backbone"])
    assert result.exit_code == 0, result.output
    # The plain encoder does not output backbone vectors: refused, with the remedy.
    with pytest.raises(QuantrieveError, match="export-onnx"):
        create_app(index_dir, ServeOptions(read_only=True, onnx=str(exported)))
    onnx_file = tmp_path / "backbone.onnx"
    result = CliRunner().invoke(app, ["export-onnx", str(index_dir), str(onnx_file)])
    assert result.exit_code == 0, result.output
    retriever = qr.Retriever.load(index_dir, device="cpu")
    queries = read_dataset("fashion-mnist", tiny_fashion)["test"].images[:10]
    encoder = OnnxEncoder(onnx_file)
    f, u = encoder.embed_with_backbone(queries)
    import torch

    with torch.no_grad():
        x = torch.from_numpy(queries).permute(0, 3, 1, 2).float() / 255
        f32, u32 = retriever.model.embed_with_backbone(x)
    np.testing.assert_allclose(u, u32.numpy(), atol=1e-4)
    np.testing.assert_allclose(f, f32.numpy(), atol=1e-4 * float(np.abs(f).max()))
    with TestClient(create_app(index_dir, ServeOptions(read_only=True, onnx=str(onnx_file)))) as c:
        got = _search(c, queries)
    index = qr.PQIndex.load(index_dir)
    prints = None if index.content is None else image_fingerprints(queries)
    want = index.search_numpy(f, 10, fingerprints=prints, refine_queries=u)[1]
    assert got == want.tolist()
