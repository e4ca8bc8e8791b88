"""The search service's HTTP API (FastAPI's TestClient): every endpoint, every refusal, the API
key, read-only mode, CORS, live changes on disk, and results identical to the library's."""

from __future__ import annotations

import io
import json
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, build_tiny_index
from PIL import Image
from typer.testing import CliRunner

with warnings.catch_warnings():  # starlette asks for httpx2; httpx is what FastAPI documents
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

import quantrieve as qr
from quantrieve.cli import app as cli
from quantrieve.data.images import load_image_file
from quantrieve.index.writer import IndexBusyError
from quantrieve.serve import SearchService, ServeOptions, create_app

KEY = "test-key-1234"
OPTIONS = ServeOptions(api_key=KEY, max_k=20, max_batch=4, max_upload_bytes=300_000)


def png(pixels: np.ndarray, mode: str | None = None) -> bytes:
    image = Image.fromarray(pixels.squeeze())
    if mode:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def bar_image(row: int, seed: int = 0) -> np.ndarray:
    """A TINY.size-square image like the tiny dataset's: noise and a bright bar at ``row``."""
    image = np.random.default_rng(seed).integers(0, 60, (TINY.size, TINY.size)).astype(np.uint8)
    image[row : row + 2] = 230
    return image


@pytest.fixture
def index_dir(tiny_index: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_index, tmp_path / "index"))


@pytest.fixture
def client(index_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(index_dir, OPTIONS)) as test_client:
        yield test_client


def files(*images: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (name, data, "image/png")) for name, data in images]


def test_health_stats_metrics_page_and_openapi(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok", "items": TINY.train, "index_version": 0}
    client.post("/search", json={"embeddings": [[0.0] * TINY.dim], "k": 3})
    stats = client.get("/stats").json()
    assert (
        stats["items"] == TINY.train and stats["bits"] == TINY.bits and stats["index_version"] == 0
    )
    assert stats["index_format_version"] == 2 and len(stats["codebooks_sha256"]) == 64
    assert (stats["refine_depth"], stats["refine_source"]) == (0, None)  # ADC alone
    assert stats["refine_expand"] == 0
    assert stats["queries_served"] == 1 and set(stats["latency_ms"]) == {"p50", "p90", "p99"}
    assert stats["writes_need_api_key"] and stats["resident_memory_bytes"] > 0
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = metrics.text
    assert (
        f"quantrieve_index_items {TINY.train}.0" in text and "quantrieve_queries_total 1.0" in text
    )
    assert "quantrieve_search_duration_seconds_count 1.0" in text
    assert 'route="/search",status="200"' in text
    for line in text.splitlines():  # every sample line is "name{labels} number"
        if line and not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])
    page = client.get("/")
    assert page.status_code == 200 and 'id="query-file"' in page.text and "<script>" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no external assets
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/search"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    assert {"/items", "/items/{item}", "/items/{item}/image", "/stats", "/metrics"} <= set(
        spec["paths"]
    )


def test_search_by_image_equals_the_library(client: TestClient, index_dir: Path) -> None:
    data = png(bar_image(4))
    response = client.post("/search", files=files(("q.png", data)), data={"k": "5"})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["k"] == 5 and result["distance"] == "l2" and result["items"] == TINY.train
    (query,) = result["queries"]
    assert query["query"] == "q.png" and len(query["hits"]) == 5
    hit = query["hits"][0]
    assert set(hit) == {"rank", "item", "id", "distance", "labels", "added", "image_url"}
    assert hit["image_url"] == f"/items/{hit['item']}/image" and hit["labels"]
    # The same file through the library (what `quantrieve search FILE` does): identical.
    file = index_dir.parent / "q.png"
    file.write_bytes(data)
    retriever = qr.Retriever.load(index_dir)
    expected = retriever.search(load_image_file(file, TINY.size, 1), k=5).hits[0]
    assert [h["item"] for h in query["hits"]] == [h.index for h in expected]
    assert [h["distance"] for h in query["hits"]] == [h.distance for h in expected]


def test_search_by_items_embeddings_and_several_images(client: TestClient) -> None:
    by_items = client.post("/search", json={"items": [7, 8], "k": 3, "distance": "sqeuclidean"})
    assert by_items.status_code == 200
    body = by_items.json()
    assert body["distance"] == "sqeuclidean" and [q["query"] for q in body["queries"]] == [
        "item 7",
        "item 8",
    ]
    f = torch.randn(2, TINY.dim)
    by_vectors = client.post("/search", json={"embeddings": f.tolist(), "k": 4}).json()
    index = qr.PQIndex.load(client.app.state.service.path)  # type: ignore[attr-defined]
    d, i = index.search(f, 4)
    assert [[h["item"] for h in q["hits"]] for q in by_vectors["queries"]] == i.tolist()
    assert [[h["distance"] for h in q["hits"]] for q in by_vectors["queries"]] == d.tolist()
    several = client.post(
        "/search",
        files=files(("a.png", png(bar_image(0))), ("b.png", png(bar_image(9)))),
        data={"k": "2"},
    ).json()
    assert [q["query"] for q in several["queries"]] == ["a.png", "b.png"]


def test_items_and_their_images(client: TestClient) -> None:
    item = client.get("/items/7").json()
    assert item["item"] == 7 and item["id"] == "train:7" and not item["added"]
    assert len(item["code"]) == 4 and item["labels"]
    image = client.get("/items/7/image")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).size == (
        TINY.size,
        TINY.size,
    )  # rendered from the IDX arrays
    assert client.get("/items/7/image").content == image.content  # cached


def test_add_needs_the_key_and_is_durable_before_the_response(
    client: TestClient, index_dir: Path
) -> None:
    data = png(bar_image(2, seed=9))
    assert client.post("/items", files=files(("new.png", data))).status_code == 401
    wrong = client.post("/items", files=files(("new.png", data)), headers={"X-API-Key": "nope"})
    assert wrong.status_code == 401
    added = client.post(
        "/items",
        files=files(("new.png", data), ("other.png", png(bar_image(6)))),
        data={"labels": "coat"},
        headers={"X-API-Key": KEY},
    )
    assert added.status_code == 201, added.text
    body = added.json()
    assert [a["item"] for a in body["added"]] == [TINY.train, TINY.train + 1] and body[
        "index_version"
    ] == 1
    on_disk = qr.PQIndex.load(index_dir)  # durable: the command line sees it at once
    assert len(on_disk) == TINY.train + 2
    assert on_disk.ids[-2:] == [f"added:{TINY.train}", f"added:{TINY.train + 1}"]
    assert on_disk.label_names(TINY.train) == ["coat"]
    item = client.get(f"/items/{TINY.train}").json()
    assert item["added"] and item["name"] == "new.png" and item["labels"] == ["coat"]
    image = client.get(f"/items/{TINY.train}/image")  # a thumbnail of the upload as received
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).size == (TINY.size, TINY.size)
    # Its code is its image's code, and it can be searched by.
    retriever = qr.Retriever.load(index_dir)
    pixels = np.asarray(Image.open(io.BytesIO(data)))[None, :, :, None]
    assert item["code"] == retriever.encode(pixels)[0].tolist()
    assert client.post("/search", json={"items": [TINY.train], "k": 3}).status_code == 200
    bearer = client.post(
        "/items", files=files(("x.png", data)), headers={"Authorization": f"Bearer {KEY}"}
    )
    assert bearer.status_code == 201 and bearer.json()["added"][0]["item"] == 322


def test_delete_tombstones_for_good(client: TestClient, index_dir: Path) -> None:
    assert client.delete("/items/7").status_code == 401
    deleted = client.delete("/items/7", headers={"X-API-Key": KEY})
    assert deleted.status_code == 200 and deleted.json()["deleted"] == 7
    assert client.get("/items/7").status_code == 404
    assert "deleted" in client.get("/items/7").json()["detail"]
    assert client.get("/items/7/image").status_code == 404
    assert client.delete("/items/7", headers={"X-API-Key": KEY}).status_code == 404
    assert client.post("/search", json={"items": [7]}).status_code == 404
    everything = client.post("/search", json={"embeddings": [[0.0] * TINY.dim], "k": 20}).json()
    assert 7 not in [h["item"] for h in everything["queries"][0]["hits"]]
    assert "train:7" not in qr.PQIndex.load(index_dir).ids
    assert client.get("/stats").json()["deleted_items"] == 1
    # an add after the delete (its row hidden, not dropped) gets the next item number
    added = client.post(
        "/items", files=files(("n.png", png(bar_image(2)))), headers={"X-API-Key": KEY}
    )
    item = added.json()["added"][0]["item"]
    assert added.status_code == 201 and item == TINY.train
    assert client.get(f"/items/{item}").json()["name"] == "n.png"
    found = client.post("/search", json={"items": [item], "k": 1}).json()
    assert found["queries"][0]["hits"][0]["item"] == item


def test_bad_requests_are_refused_and_the_service_goes_on(client: TestClient) -> None:
    good = png(bar_image(3))
    bomb = io.BytesIO()
    Image.new("1", (8000, 6000)).save(bomb, format="PNG")  # 48 Mpx in a few kB
    wide = io.BytesIO()
    Image.fromarray(np.zeros((TINY.size, TINY.size), dtype=np.uint16)).save(
        wide, format="PNG"
    )  # I;16
    tiff = io.BytesIO()
    Image.fromarray(bar_image(1)).save(tiff, format="TIFF")
    cases = [
        (files(("a.txt", b"just some text")), {}, 400, "not an image"),
        (files(("empty.png", b"")), {}, 400, "empty file"),
        (files(("cut.png", good[: len(good) // 2])), {}, 400, "cut.png"),
        (files(("bomb.png", bomb.getvalue())), {}, 400, "over the limit"),
        (files(("deep.png", wide.getvalue())), {}, 400, "pixel mode"),
        (files(("scan.tif", tiff.getvalue())), {}, 400, "not an image quantrieve reads"),
        (files(("q.png", good)), {"k": "0"}, 422, "k must be between 1 and 20"),
        (files(("q.png", good)), {"k": "21"}, 422, "k must be between 1 and 20"),
        (files(("q.png", good)), {"k": "ten"}, 422, "k must be an integer"),
        (files(("q.png", good)), {"distance": "cosine"}, 422, "distance must be one of"),
        (files(*[(f"{i}.png", good) for i in range(5)]), {}, 422, "at most 4"),
        ([("photo", ("q.png", good, "image/png"))], {}, 422, "unexpected file field"),
    ]
    for upload, form, status, message in cases:
        response = client.post("/search", files=upload, data=form)
        assert response.status_code == status, (message, response.text)
        assert message in response.json()["detail"], response.text
    json_cases = [
        ({"items": [1], "k": 100}, 422, "k must be between"),
        ({"items": list(range(5))}, 422, "at most 4"),
        ({"items": [99999]}, 404, "no such item"),
        ({"items": ["../etc/passwd"]}, 422, "items.0"),
        ({"items": [1], "embeddings": [[0.0] * TINY.dim]}, 422, "one of them"),
        ({}, 422, "one of them"),
        ({"embeddings": [[0.0] * 5]}, 422, "must have 16 values"),
        ({"items": [1], "k": 3, "path": "/etc"}, 422, "path"),
        ({"items": [1], "distance": "cosine"}, 422, "distance"),
    ]
    for body, status, message in json_cases:
        response = client.post("/search", json=body)
        assert response.status_code == status, (body, response.text)
        assert message in response.json()["detail"], response.text
    nan = client.post(
        "/search",
        content=b'{"embeddings": [[NaN' + b", 0" * 15 + b"]]}",
        headers={"Content-Type": "application/json"},
    )
    assert nan.status_code == 422 and "finite" in nan.json()["detail"]
    assert (
        client.post(
            "/search", content=b"{not json", headers={"Content-Type": "application/json"}
        ).status_code
        == 422
    )
    assert (
        client.post("/search", content=b"k=3", headers={"Content-Type": "text/plain"}).status_code
        == 400
    )
    assert client.post(
        "/search", content=b"--x\r\n", headers={"Content-Type": "multipart/form-data; boundary=x"}
    ).status_code in (400, 422)
    big = client.post("/search", files=files(("big.png", b"\0" * 400_000)))
    assert big.status_code == 413 and "over the limit" in big.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted while reading
        for _ in range(40):
            yield b"\0" * 10_000

    streamed = client.post(
        "/search", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert streamed.status_code == 413
    streamed_json = client.post(
        "/search", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert streamed_json.status_code == 413 and "over the limit" in streamed_json.json()["detail"]
    for path in ("/items/abc", "/items/-1", "/items/1.5", f"/items/{2**63}"):
        assert client.get(path).status_code == 422, path
    assert client.get("/items/..%2F..%2Fetc%2Fpasswd").status_code in (404, 422)
    assert client.get("/items/5000").status_code == 404
    assert (
        client.post(
            "/items", content=b"{}", headers={"X-API-Key": KEY, "Content-Type": "application/json"}
        ).status_code
        == 400
    )
    no_files = client.post("/items", data={"labels": "coat"}, headers={"X-API-Key": KEY})
    assert no_files.status_code in (400, 422)
    bad_label = client.post(
        "/items",
        files=files(("n.png", good)),
        data={"labels": "spaceship"},
        headers={"X-API-Key": KEY},
    )
    assert (
        bad_label.status_code == 422 and "unknown label 'spaceship'" in bad_label.json()["detail"]
    )
    assert client.get("/health").status_code == 200  # still serving
    assert client.get("/stats").json()["items"] == TINY.train  # nothing refused was added


def test_read_only_services_share_an_index_writers_do_not(index_dir: Path) -> None:
    read_only = ServeOptions(read_only=True)
    with (
        TestClient(create_app(index_dir, read_only)) as one,
        TestClient(create_app(index_dir, read_only)) as two,
    ):
        assert one.post("/items", files=files(("n.png", png(bar_image(1))))).status_code == 403
        assert two.delete("/items/1").status_code == 403
        assert one.post("/search", json={"items": [1]}).status_code == 200
        with TestClient(create_app(index_dir)):
            with pytest.raises(IndexBusyError, match="another process is changing this index"):
                SearchService(index_dir)
            result = CliRunner().invoke(cli, ["compact", str(index_dir)])
            assert isinstance(result.exception, IndexBusyError)
        SearchService(index_dir).close()  # the lock went with the app


def test_cors_is_off_unless_asked_for(index_dir: Path) -> None:
    origin = {"Origin": "http://example.test"}
    with TestClient(create_app(index_dir)) as plain:
        assert "access-control-allow-origin" not in plain.get("/health", headers=origin).headers
    with TestClient(
        create_app(index_dir, ServeOptions(cors_origins=("http://example.test",)))
    ) as c:
        response = c.get("/health", headers=origin)
        assert response.headers["access-control-allow-origin"] == "http://example.test"
        other = c.get("/health", headers={"Origin": "http://elsewhere.test"})
        assert "access-control-allow-origin" not in other.headers


def test_compaction_and_the_command_line_see_what_the_service_served(index_dir: Path) -> None:
    with TestClient(create_app(index_dir, OPTIONS)) as c:
        c.post("/items", files=files(("n.png", png(bar_image(5)))), headers={"X-API-Key": KEY})
        c.delete("/items/3", headers={"X-API-Key": KEY})
        before = c.post("/search", json={"embeddings": [[0.5] * TINY.dim], "k": 10}).json()
    runner = CliRunner()
    source = json.loads((index_dir / "index.json").read_text())["source"]["root"]
    args = ["search", str(index_dir), "--items", "0", "--data-dir", source, "-k", "400", "--json"]
    out = runner.invoke(cli, args, catch_exceptions=False)
    ids = [h["id"] for h in json.loads(out.output[out.output.index("[") :])[0]["results"]]
    assert f"added:{TINY.train}" in ids and "train:3" not in ids and len(ids) == TINY.train
    result = runner.invoke(cli, ["compact", str(index_dir)], catch_exceptions=False)
    assert result.exit_code == 0 and "1 deleted items dropped" in result.output
    with TestClient(create_app(index_dir, OPTIONS)) as c:
        after = c.post("/search", json={"embeddings": [[0.5] * TINY.dim], "k": 10}).json()
        assert (
            after["index_version"] == 3 and c.get(f"/items/{TINY.train}").json()["name"] == "n.png"
        )
        assert c.get("/items/3").status_code == 404
    assert [h["item"] for h in after["queries"][0]["hits"]] == [
        h["item"] for h in before["queries"][0]["hits"]
    ]


def test_workers_need_read_only(index_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["serve", str(index_dir), "--workers", "2"])
    assert isinstance(result.exception, qr.QuantrieveError)
    assert "--workers 2 needs --read-only" in str(result.exception)


@pytest.fixture(scope="module")
def folder_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index of an image folder (PNG and JPEG files, classes by sub-folder)."""
    base = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for c, name in enumerate(["low", "high"]):
        (base / "photos" / name).mkdir(parents=True)
        for i in range(40):
            image = rng.integers(0, 70, (40, 48, 3)).astype(np.uint8)
            image[c * 20 : c * 20 + 8] = 230
            Image.fromarray(image).save(
                base / "photos" / name / f"{i:02d}.{'jpg' if i % 2 else 'png'}"
            )
    return build_tiny_index(
        base / "photos", base, "--dataset", "image-folder", "--image-size", "16", "--holdout", "10"
    )


def test_folder_items_come_from_their_files(folder_index: Path, tmp_path: Path) -> None:
    index_dir = Path(shutil.copytree(folder_index, tmp_path / "index"))
    with TestClient(create_app(index_dir, ServeOptions(read_only=True))) as c:
        item = c.get("/items/1").json()
        name = item["id"]
        assert name.split("/")[0] == item["labels"][0] and name.endswith((".jpg", ".png"))
        image = c.get("/items/1/image")
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(image.content)).size == (48, 40)  # the file, not 16x16
        by_item = c.post("/search", json={"items": [1], "k": 3}).json()["queries"][0]["hits"]
        retriever = qr.Retriever.load(index_dir)
        photos = Path(json.loads((index_dir / "index.json").read_text())["source"]["root"])
        expected = retriever.search(load_image_file(photos / name, 16, 3), k=3).hits[0]
        assert [h["item"] for h in by_item] == [h.index for h in expected]
        (photos / name).rename(photos / "moved")
        try:
            assert c.get("/items/1/image").status_code == 200  # cached
            gone = c.post("/search", json={"items": [1]})
            assert gone.status_code == 404 and "missing" in gone.json()["detail"]
            assert c.get("/health").status_code == 200
        finally:
            (photos / "moved").rename(photos / name)


def test_an_item_has_one_number_in_the_api_the_command_line_and_http(index_dir: Path) -> None:
    query = [[0.5] * TINY.dim]
    with TestClient(create_app(index_dir, OPTIONS)) as c:
        for item in (0, 1, 2, 3):  # every later row shifts down by four
            assert c.delete(f"/items/{item}", headers={"X-API-Key": KEY}).status_code == 200
        served = c.post("/search", json={"embeddings": query, "k": 10}).json()
    http = [h["item"] for h in served["queries"][0]["hits"]]
    assert "row" not in served["queries"][0]["hits"][0]  # positions stay inside one version
    found = qr.Retriever.load(index_dir).search(torch.tensor(query), k=10).hits[0]
    assert [h.item for h in found] == http
    assert [h.row for h in found] == [item - 4 for item in http]  # base items after 0-3
    assert all(f"train:{h.item}" == h.id for h in found)
    source = json.loads((index_dir / "index.json").read_text())["source"]["root"]
    args = [
        "search",
        str(index_dir),
        "--items",
        "5",
        "--data-dir",
        source,
        "--part",
        "train",
        "-k",
        "10",
        "--json",
    ]
    out = CliRunner().invoke(cli, args, catch_exceptions=False).output
    hits = json.loads(out[out.index("[") :])[0]["results"]
    assert all(f"train:{h['item']}" == h["id"] for h in hits) and hits[0]["item"] == 5


def test_the_contract_fixes_a_schema_fuzzer_asked_for(client: TestClient) -> None:
    # A 405 names every method of the path (GET and DELETE of /items/{item} are two routes).
    put = client.put("/items/7")
    assert put.status_code == 405 and put.json() == {"detail": "Method Not Allowed"}
    assert set(put.headers["allow"].split(", ")) == {"GET", "DELETE"}
    assert client.post("/health").headers["allow"] == "GET"
    # Items and k are integers as JSON Schema means it: never booleans or strings.
    for body in ({"items": [False]}, {"items": [True]}, {"items": ["3"]}, {"items": [3.5]}):
        refused = client.post("/search", json=body)
        assert refused.status_code == 422 and "items.0" in refused.json()["detail"], body
    assert client.post("/search", json={"items": [7], "k": True}).status_code == 422
    assert client.post("/search", json={"items": [7], "k": 3.0}).json()["k"] == 3
    for body in ({"items": None}, {"items": []}, {"embeddings": [[1e10] * TINY.dim]}):
        assert client.post("/search", json=body).status_code == 422, body
    # No operation takes query parameters: a k in the URL is refused, not ignored.
    image = files(("q.png", png(bar_image(4))))
    in_url = client.post("/search?k=5", files=image)
    assert in_url.status_code == 422 and "'k'" in in_url.json()["detail"]
    assert client.get("/items/7?size=large").status_code == 422
    assert client.post("/search", files=image, data={"k": "5.0"}).json()["k"] == 5
    # The document states the limits, the image types and the refusals.
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/search"]["post"]["requestBody"]["content"]
    form = body["multipart/form-data"]
    assert form["schema"]["properties"]["k"]["maximum"] == OPTIONS.max_k
    assert form["schema"]["properties"]["images"]["maxItems"] == OPTIONS.max_batch
    assert "image/png" in form["encoding"]["images"]["contentType"]
    vectors = body["application/json"]["schema"]["properties"]["embeddings"]["items"]
    assert vectors["minItems"] == vectors["maxItems"] == TINY.dim
    responses = spec["paths"]["/search"]["post"]["responses"]
    assert responses["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SearchResponse"
    }
    assert responses["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }
    hit = spec["components"]["schemas"]["HitOut"]["properties"]
    assert "row" not in hit and set(hit) == {
        "rank",
        "item",
        "id",
        "distance",
        "labels",
        "added",
        "image_url",
    }
    labels = spec["paths"]["/items"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert "coat" in labels["schema"]["properties"]["labels"]["items"]["pattern"]


def test_writes_are_authorised_by_a_dependency(client: TestClient, index_dir: Path) -> None:
    spec = client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["APIKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": schemes["APIKey"]["description"],
    }
    assert schemes["Bearer"]["scheme"] == "bearer"
    for path, method in (("/items", "post"), ("/items/{item}", "delete")):
        assert spec["paths"][path][method]["security"] == [{"APIKey": []}, {"Bearer": []}]
    assert "security" not in spec["paths"]["/search"]["post"]
    missing = client.delete("/items/7")
    assert missing.status_code == 401
    assert missing.json() == {
        "detail": "this service needs its API key for changes (header X-API-Key)"
    }
    assert client.delete("/items/7", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.delete("/items/7", headers={"Authorization": f"Basic {KEY}"}).status_code == 401
    assert client.delete("/items/7", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    with TestClient(create_app(index_dir, ServeOptions(read_only=True, api_key=KEY))) as c:
        refused = c.delete("/items/8", headers={"X-API-Key": KEY})
        assert refused.status_code == 403
        assert refused.json() == {"detail": "this service is read-only (started with --read-only)"}


def test_filtered_search_is_the_same_in_the_api_the_command_line_and_http(
    client: TestClient, index_dir: Path
) -> None:
    index = qr.PQIndex.load(index_dir)
    first, second = index.class_names[:2]
    f = torch.randn(2, TINY.dim, generator=torch.Generator().manual_seed(4))
    body = {"embeddings": f.tolist(), "k": 8, "labels": [first, second], "id_prefix": "train:1"}
    answer = client.post("/search", json=body)
    assert answer.status_code == 200, answer.text
    got = [[h["item"] for h in q["hits"]] for q in answer.json()["queries"]]
    rows = index.filter_rows([first, second], "train:1")
    assert len(rows) and all(index.ids[r].startswith("train:1") for r in rows)
    _, expected = index.search(f, 8, rows=rows)
    assert got == expected.tolist()
    for q in answer.json()["queries"]:
        assert all(set(h["labels"]) & {first, second} for h in q["hits"])
        assert all(h["id"].startswith("train:1") for h in q["hits"])
    # The library's Retriever and the command line, by a query image.
    image = index_dir.parent / "query.png"
    image.write_bytes(png(bar_image(3)))
    retriever = qr.Retriever.load(index_dir)
    library = retriever.search(load_image_file(image, TINY.size, 1), k=6, labels=[second])
    assert [h.labels for h in library.hits[0]] and all(second in h.labels for h in library.hits[0])
    printed = CliRunner().invoke(
        cli, ["search", str(index_dir), str(image), "-k", "6", "--label", second, "--json"]
    )
    assert printed.exit_code == 0, printed.output
    by_cli = [h["item"] for h in json.loads(printed.output)[0]["results"]]
    assert by_cli == [h.item for h in library.hits[0]]
    upload = client.post(
        "/search", files=files(("q.png", image.read_bytes())), data={"k": "6", "labels": second}
    )
    assert [h["item"] for h in upload.json()["queries"][0]["hits"]] == by_cli
    # Refusals and empty filters.
    bad = client.post("/search", json={"embeddings": f.tolist(), "labels": ["no such class"]})
    assert bad.status_code == 422 and first in bad.json()["detail"]
    none = client.post("/search", json={"embeddings": f.tolist(), "id_prefix": "nothing/"})
    assert none.status_code == 200 and none.json()["queries"][0]["hits"] == []
    # After a delete the filter's rows are those of the new version: the item is gone.
    gone = got[0][0]
    headers = {"X-API-Key": KEY}
    assert client.delete(f"/items/{gone}", headers=headers).status_code == 200
    again = client.post("/search", json=body).json()
    assert gone not in [h["item"] for h in again["queries"][0]["hits"]]
    assert all(h["id"].startswith("train:1") for q in again["queries"] for h in q["hits"])
    refused = CliRunner().invoke(cli, ["search", str(index_dir), str(image), "--label", "nope"])
    assert "unknown label" in str(refused.exception)  # main() prints it as an error line
