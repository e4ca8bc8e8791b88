"""Refinement by the backbone's representation (``refine_source="backbone"``): the head of a
ranking re-scored against the query's own unit backbone vector, through the index, the library,
the command line, the service, changes and exports."""

from __future__ import annotations

import io
import json
import shutil
import warnings
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from conftest import TINY
from PIL import Image
from typer.testing import CliRunner

import quantrieve as qr
from quantrieve.cli import app
from quantrieve.errors import QuantrieveError
from quantrieve.index.compaction import compact
from quantrieve.index.faiss_export import export_faiss, faiss_query_width, to_faiss
from quantrieve.index.format import IndexFormatError
from quantrieve.index.live import open_live
from quantrieve.index.pq_index import PQIndex
from quantrieve.index.segment_files import NewItems
from quantrieve.index.writer import IndexWriter
from quantrieve.pq import refine_head
from quantrieve.pq.settings import TIE_SPAN

with warnings.catch_warnings():  # starlette asks for httpx2; httpx is what FastAPI documents
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from quantrieve.serve import ServeOptions, create_app

M, K, D_SUB, WIDTH = 4, 16, 8, 24  # the backbone's width differs from M * d on purpose


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _index(n: int = 300, depth: int = 40, seed: int = 0) -> tuple[PQIndex, np.ndarray]:
    """An index refining by random unit 'backbone' vectors, and the float embeddings."""
    rng = np.random.default_rng(seed)
    books = rng.normal(size=(M, K, D_SUB)).astype(np.float32)
    f = rng.normal(size=(n, M * D_SUB)).astype(np.float32)
    parts = f.reshape(n, M, D_SUB)
    codes = np.stack(
        [((parts[:, m, None, :] - books[m][None]) ** 2).sum(-1).argmin(1) for m in range(M)], 1
    ).astype(np.uint8)
    vectors = _unit(rng.normal(size=(n, WIDTH))).astype(np.float16)
    index = PQIndex(
        books,
        codes,
        [f"item{i}" for i in range(n)],
        refine=vectors,
        refine_depth=depth,
        refine_source="backbone",
    )
    return index, f


def test_the_head_is_reordered_by_the_query_backbone_vectors_not_its_embeddings() -> None:
    index, _ = _index()
    rng = np.random.default_rng(1)
    queries = torch.from_numpy(rng.normal(size=(12, M * D_SUB)).astype(np.float32))
    vectors = torch.from_numpy(_unit(rng.normal(size=(12, WIDTH))))
    _, adc_i = index.search(queries, 60, refine_depth=0)
    d, items = index.search(queries, 60, refine_queries=vectors)
    head_d, head_i = refine_head(vectors, adc_i, torch.from_numpy(index.refine), 40, "l2")
    assert torch.equal(items[:, :40], head_i) and torch.equal(items[:, 40:], adc_i[:, 40:])
    torch.testing.assert_close(d[:, :40], head_d)
    assert not torch.equal(items, adc_i)  # the head did move
    # The stored vectors are unit length: the refined order is the cosine order.
    cos = (vectors[:, None, :] * torch.from_numpy(index.refine[head_i.numpy()]).float()).sum(-1)
    assert (cos[:, :-1] >= cos[:, 1:] - 1e-3).all()
    # numpy (the torch-free service) ranks the same way
    _, i_np = index.search_numpy(queries.numpy(), 60, refine_queries=vectors.numpy())
    assert (i_np == items.numpy()).all()
    with pytest.raises(QuantrieveError, match="refine_queries"):
        index.search(queries, 10)  # an embedding is not a backbone vector
    with pytest.raises(QuantrieveError, match=r"\(12, 24\)"):
        index.search(queries, 10, refine_queries=vectors[:, :5])
    assert torch.equal(index.search(queries, 10, refine_depth=0)[1], adc_i[:, :10])


def test_saved_as_version_3_stated_and_read_back(tmp_path: Path) -> None:
    index, _ = _index()
    index.save(tmp_path / "ix")
    meta = json.loads((tmp_path / "ix" / "index.json").read_text())
    assert meta["version"] == 3 and meta["refine_source"] == "backbone"
    assert meta["has_refine"] and meta["refine_depth"] == 40
    loaded = PQIndex.load(tmp_path / "ix")
    assert loaded.refine_source == "backbone" and loaded.refine.shape == (300, WIDTH)
    q = torch.randn(3, M * D_SUB)
    v = torch.nn.functional.normalize(torch.randn(3, WIDTH), dim=1)
    assert torch.equal(
        loaded.search(q, 10, refine_queries=v)[1],
        index.search(q, 10, None, None, refine_queries=v)[1],
    )
    embedding = PQIndex(
        index.codebooks, index.codes, index.ids, refine=np.zeros((300, 32), np.float16)
    )
    embedding.save(tmp_path / "plain")
    meta = json.loads((tmp_path / "plain" / "index.json").read_text())
    assert meta["version"] == 2 and meta["refine_source"] == "embedding"
    with pytest.raises(IndexFormatError, match="refine_source"):
        PQIndex(index.codebooks, index.codes, index.ids, refine_source="pixels")
    with pytest.raises(IndexFormatError, match="float16"):  # an embedding source is M * d wide
        PQIndex(index.codebooks, index.codes, index.ids, refine=index.refine)


def test_faiss_export_is_the_same_two_stage_search_in_plain_faiss(tmp_path: Path) -> None:
    index, f = _index(depth=40)
    rng = np.random.default_rng(7)
    queries = f[:25] + 0.05 * rng.normal(size=f[:25].shape).astype(np.float32)
    vectors = _unit(rng.normal(size=(25, WIDTH)))
    assert faiss_query_width(index) == M * D_SUB + WIDTH
    assert faiss_query_width(index, refine=False) == M * D_SUB
    path = export_faiss(index, tmp_path / "ix.faiss")
    exported = faiss.read_index(str(path))  # plain faiss, nothing of quantrieve at query time
    assert exported.d == M * D_SUB + WIDTH and exported.k_factor == 4
    _, faiss_items = exported.search(np.concatenate([queries, vectors], 1), 10)
    _, ours = index.search(
        torch.from_numpy(queries), 10, "sqeuclidean", refine_queries=torch.from_numpy(vectors)
    )
    assert (faiss_items == ours.numpy()).all()
    _, adc = index.search(torch.from_numpy(queries), 10, "sqeuclidean", refine_depth=0)
    assert not (faiss_items == adc.numpy()).all()  # the backbone did re-order the head
    plain = to_faiss(index, refine=False)
    assert isinstance(plain, faiss.IndexPQ) and plain.ntotal == len(index)
    fast = to_faiss(index, fast_scan=True)  # the FastScan first stage takes the same queries
    assert fast.d == M * D_SUB + WIDTH and fast.ntotal == len(index)


def test_added_deleted_and_compacted_items_keep_their_vectors(tmp_path: Path) -> None:
    index, _ = _index(n=200)
    index.save(tmp_path / "ix")
    rng = np.random.default_rng(4)
    new = _unit(rng.normal(size=(3, WIDTH)))
    items = NewItems(
        codes=index.codes[:3].copy(),  # codes tied with items 0-2: only the vectors differ
        pixels=np.zeros((3, 4, 4, 1), np.uint8),
        raw=[b"a", b"b", b"c"],
        names=["a", "b", "c"],
        refine=new.astype(np.float16),
    )
    with IndexWriter(tmp_path / "ix") as writer:
        live = writer.append(open_live(tmp_path / "ix"), items)
        writer.delete(live, [5])
    f = torch.from_numpy(index.codebooks[np.arange(M), index.codes[:3].astype(int)].reshape(3, -1))
    for version in (PQIndex.load(tmp_path / "ix"), compact(tmp_path / "ix") and None):
        if version is None:
            version = PQIndex.load(tmp_path / "ix")
        assert version.refine_source == "backbone" and version.refine.shape == (202, WIDTH)
        _, found = version.search(f, 1, refine_queries=torch.from_numpy(new))
        assert [version.ids[r] for r in found[:, 0].tolist()] == [
            f"added:{k}" for k in (200, 201, 202)
        ]


@pytest.fixture(scope="module")
def backbone_index(tiny_index: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run encoded with ``--refine-depth 30 --refine-source backbone``."""
    out = tmp_path_factory.mktemp("backbone") / "index"
    args = ["encode", str(tiny_index.parent / "run"), "--out", str(out)]
    result = CliRunner().invoke(
        app, [*args, "--refine-depth", "30", "--refine-source", "backbone"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "backbone vectors re-scoring the first 30 results" in result.output
    return out


def test_encode_search_and_evaluate_by_the_backbone(backbone_index: Path, tiny_index: Path) -> None:
    index, plain = PQIndex.load(backbone_index), PQIndex.load(tiny_index)
    retriever = qr.Retriever.load(backbone_index)
    model = retriever.model
    assert np.array_equal(index.codes, plain.codes)
    assert index.refine.shape == (len(plain), model.backbone_dim)
    norms = np.linalg.norm(index.refine.astype(np.float32), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)  # unit backbone vectors, not embeddings
    images = np.random.default_rng(2).integers(0, 255, (6, TINY.size, TINY.size, 1), np.uint8)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        f32, u32 = model.embed_with_backbone(x)
    torch.testing.assert_close(u32.norm(dim=1), torch.ones(6))
    torch.testing.assert_close(f32, model.embed(x))
    f, u = retriever.embed_for_index(images)  # what search uses (autocast, as encode did)
    assert u is not None
    torch.testing.assert_close(u, u32, atol=0.02, rtol=0)
    # The library's search: ADC's first 30 and the rest of the tie group at place 30 (up to
    # TIE_SPAN * 30), re-ordered by |u - stored|, then ADC's rest.
    # Without query expansion (--refine-expand 0):
    found = retriever.search(images, k=40, refine_expand=0)
    # The index's default, the head re-ordered once more by the mean of u and its first 3:
    expanded = retriever.search(images, k=40)
    assert index.refine_expand == 3
    adc_d, adc = index.search(f, len(index), refine_depth=0)
    stored = torch.from_numpy(index.refine).float()
    for q in range(len(images)):
        head = adc[q][adc_d[q] <= adc_d[q, 29]][: TIE_SPAN * 30]
        by_fine = (stored[head] - u[q]).norm(dim=1)
        want = head[torch.sort(by_fine, stable=True).indices]  # the head is in item order
        assert found.indices[q, : min(40, len(head))].tolist() == want[:40].tolist()
        rest = [i for i in adc[q].tolist() if i not in set(head.tolist())]
        assert found.indices[q, len(head) :].tolist() == rest[: max(0, 40 - len(head))]
        mean = (u[q] + stored[want[:3]].sum(0)) / 4
        by_mean = (stored[head] - mean).norm(dim=1)
        want = head[torch.sort(by_mean, stable=True).indices]
        assert expanded.indices[q, : min(40, len(head))].tolist() == want[:40].tolist()
        assert expanded.indices[q, len(head) :].tolist() == rest[: max(0, 40 - len(head))]
    assert not np.array_equal(found.indices, expanded.indices)  # the expansion moved some
    # evaluate: off equals the plain index bit for bit; on is stated
    args = ["evaluate", str(backbone_index), "--json", "--precision-at", "10"]
    on = json.loads(CliRunner().invoke(app, args, catch_exceptions=False).stdout)
    off = json.loads(CliRunner().invoke(app, [*args, "--refine-depth", "0"]).stdout)
    base = json.loads(
        CliRunner()
        .invoke(app, ["evaluate", str(tiny_index), "--json", "--precision-at", "10"])
        .stdout
    )
    assert on["extra"]["refine_depth"] == 30
    assert off["map_at_k"] == base["map_at_k"] and off["precision_at"] == base["precision_at"]
    assert on["map_at_k"] != off["map_at_k"]  # the refinement changed the rankings


def test_embed_and_export_faiss_give_plain_faiss_the_same_search(
    backbone_index: Path, tmp_path: Path
) -> None:
    images = np.random.default_rng(3).integers(0, 255, (5, TINY.size, TINY.size, 1), np.uint8)
    files = []
    for i, pixels in enumerate(images):
        files.append(tmp_path / f"q{i}.png")
        Image.fromarray(pixels[..., 0]).save(files[-1])
    runner = CliRunner()
    out = runner.invoke(app, ["export-faiss", str(backbone_index), str(tmp_path / "ix.faiss")])
    assert out.exit_code == 0, out.output
    assert "IndexRefine" in out.output and "unit backbone vector" in out.output
    assert "no query expansion" in " ".join(out.output.split())  # the index expands by 3
    args = ["embed", str(backbone_index), *map(str, files), "--out"]
    out = runner.invoke(app, [*args, str(tmp_path / "q.npy")], catch_exceptions=False)
    assert "embeddings | backbone vectors" in out.output
    queries = np.load(tmp_path / "q.npy")
    exported = faiss.read_index(str(tmp_path / "ix.faiss"))
    assert queries.shape == (5, exported.d)
    _, faiss_items = exported.search(queries, 10)
    retriever = qr.Retriever.load(backbone_index)
    f, u = retriever.embed_for_index(images)
    # faiss re-scores exactly R = 30 (k_factor 3 at k = 10) where quantrieve also takes in the
    # rest of a tie group straddling place R (the tiny codes tie everywhere): the same as a
    # fixed-depth re-scoring of the ADC ranking.
    _, adc = retriever.index.search(f, 30, "sqeuclidean", refine_depth=0)
    _, fixed = refine_head(u, adc, torch.from_numpy(retriever.index.refine), 30, "sqeuclidean")
    assert (faiss_items == fixed[:, :10].numpy()).all()
    runner.invoke(app, [*args, str(tmp_path / "e.npy"), "--no-refine"], catch_exceptions=False)
    np.testing.assert_array_equal(np.load(tmp_path / "e.npy"), queries[:, : f.shape[1]])


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.squeeze()).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_service_searches_and_adds_by_the_backbone(
    backbone_index: Path, tmp_path: Path
) -> None:
    index_dir = Path(shutil.copytree(backbone_index, tmp_path / "index"))
    image = np.random.default_rng(7).integers(0, 255, (TINY.size, TINY.size), np.uint8)
    upload = [("images", ("q.png", _png(image), "image/png"))]
    with TestClient(create_app(index_dir, ServeOptions(api_key="k" * 12))) as client:
        stats = client.get("/stats").json()
        assert (stats["refine_depth"], stats["refine_source"]) == (30, "backbone")
        assert stats["refine_expand"] == 3
        assert stats["index_format_version"] == 3
        body = client.post("/search", files=upload, data={"k": "8"}).json()
        expected = qr.Retriever.load(index_dir).search(image[None, :, :, None], k=8)
        assert [h["item"] for h in body["queries"][0]["hits"]] == expected.indices[0].tolist()
        vectors = client.post("/search", json={"embeddings": [[0.0] * TINY.dim], "k": 3})
        assert vectors.status_code == 422 and "refine_queries" in vectors.text
        added = client.post("/items", files=upload, headers={"X-API-Key": "k" * 12})
        assert added.status_code == 201, added.text
        item = added.json()["added"][0]["item"]
        again = client.post("/search", files=upload, data={"k": "1"}).json()
        assert again["queries"][0]["hits"][0]["item"] == item  # its own copy, first
    stored = PQIndex.load(index_dir)
    retriever = qr.Retriever.load(backbone_index)
    _, u = retriever.embed_for_index(image[None, :, :, None])
    assert u is not None and stored.refine.shape[1] == u.shape[1]
    np.testing.assert_allclose(stored.refine[-1].astype(np.float32), u[0].numpy(), atol=1e-3)


def test_evaluate_takes_the_query_vectors_already_computed(
    backbone_index: Path, tiny_fashion: Path
) -> None:
    retriever = qr.Retriever.load(backbone_index)
    queries = qr.read_dataset("fashion-mnist", tiny_fashion)["test"]
    f, u = retriever.embed_for_index(queries)
    whole = retriever.evaluate(queries, pr_queries=0)
    embedded = []
    embed = retriever.embed_for_index
    retriever.embed_for_index = lambda *a, **kw: embedded.append(1) or embed(*a, **kw)  # type: ignore[method-assign]
    given = retriever.evaluate(queries, embeddings=f, refine_queries=u, pr_queries=0)
    assert not embedded  # nothing embedded again
    assert given.map_at_k == whole.map_at_k and given.precision_at == whole.precision_at
    again = retriever.evaluate(queries, embeddings=f, pr_queries=0)  # the vectors are embedded
    assert embedded and again.map_at_k == whole.map_at_k
