"""The service's Prometheus metrics (GET /metrics), parsed with prometheus_client's own parser:
counts after N searches, requests by route and status, index gauges, build info, process
metrics; one registry per app; several workers summed through the multiprocess mode."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from prometheus_client import values
from prometheus_client.parser import text_string_to_metric_families

with warnings.catch_warnings():  # starlette asks for httpx2; httpx is what FastAPI documents
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from conftest import TINY

import quantrieve as qr
from quantrieve.serve import ServeOptions, create_app
from quantrieve.serve import metrics as service_metrics

HOST = "127.0.0.1"


def families(text: str) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """Every family of an exposition: name -> {(sample name, sorted labels): value}."""
    return {
        family.name: {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
        for family in text_string_to_metric_families(text)
    }


def value(parsed: dict, family: str, sample: str | None = None, **labels: str) -> float:
    return parsed[family][(sample or family, tuple(sorted(labels.items())))]


@pytest.fixture
def client(tiny_index: Path, tmp_path: Path) -> Iterator[TestClient]:
    index_dir = shutil.copytree(tiny_index, tmp_path / "index")
    with TestClient(create_app(index_dir, ServeOptions(read_only=True))) as test_client:
        yield test_client


def test_metrics_after_searches(client: TestClient) -> None:
    """After 3 searches (5 queries), one 404 and one 422: the search histogram counts 3, the
    request counter has each route and status, the gauges and build info are right."""
    for queries in (1, 2, 2):
        response = client.post("/search", json={"embeddings": [[0.0] * TINY.dim] * queries, "k": 3})
        assert response.status_code == 200, response.text
    assert client.get("/items/99999").status_code == 404
    zero_k = {"embeddings": [[0.0] * TINY.dim], "k": 0}
    assert client.post("/search", json=zero_k).status_code == 422
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    parsed = families(response.text)

    search = "quantrieve_search_duration_seconds"
    assert value(parsed, search, f"{search}_count") == 3
    assert value(parsed, search, f"{search}_bucket", le="+Inf") == 3
    assert 0 < value(parsed, search, f"{search}_sum") < 60
    buckets = sorted(
        (float(dict(labels)["le"]), v)
        for (name, labels), v in parsed[search].items()
        if name.endswith("_bucket")
    )
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    assert len(buckets) == len(service_metrics.LATENCY_BUCKETS) + 1

    requests = "quantrieve_http_requests"  # the family; its samples end in _total
    total = f"{requests}_total"
    assert value(parsed, requests, total, method="POST", route="/search", status="200") == 3
    assert value(parsed, requests, total, method="POST", route="/search", status="422") == 1
    assert value(parsed, requests, total, method="GET", route="/items/{item}", status="404") == 1
    duration = "quantrieve_http_request_duration_seconds"  # every request is timed
    assert value(parsed, duration, f"{duration}_count", method="POST", route="/search") == 4
    assert value(parsed, duration, f"{duration}_count", method="GET", route="/items/{item}") == 1
    assert value(parsed, "quantrieve_queries", "quantrieve_queries_total") == 5
    assert value(parsed, "quantrieve_items_added", "quantrieve_items_added_total") == 0

    assert value(parsed, "quantrieve_index_items") == TINY.train
    assert value(parsed, "quantrieve_index_generation") == 0
    assert value(parsed, "quantrieve_index_segments") == 0
    assert value(parsed, "quantrieve_index_deleted_items") == 0

    (((_, build_labels), one),) = parsed["quantrieve_build_info"].items()  # an Info: value 1
    build = dict(build_labels)
    assert build["version"] == qr.__version__ and build["torch_version"] == torch.__version__
    assert one == 1

    if sys.platform == "linux":  # ProcessCollector reads /proc
        assert value(parsed, "process_resident_memory_bytes") > 0
        assert value(parsed, "process_cpu_seconds", "process_cpu_seconds_total") > 0
        assert value(parsed, "process_start_time_seconds") > 0
    # /stats (the web page) still counts the same searches
    stats = client.get("/stats").json()
    assert stats["search_requests"] == 3 and stats["queries_served"] == 5
    assert stats["resident_memory_bytes"] > 0


def test_each_app_has_its_own_registry() -> None:
    """Two Metrics in one process count apart (no global registry, no duplicate names)."""
    first, second = service_metrics.Metrics(), service_metrics.Metrics()
    first.search(4, 0.01)
    first.request("POST", "/search", 200, seconds=0.02)
    one = families(first.prometheus({}))
    two = families(second.prometheus({}))
    name = "quantrieve_search_duration_seconds"
    assert value(one, name, f"{name}_count") == 1 and value(two, name, f"{name}_count") == 0
    duration = "quantrieve_http_request_duration_seconds"
    assert value(one, duration, f"{duration}_count", method="POST", route="/search") == 1
    assert not [key for key in two[duration] if key[0].endswith("_count")]


def test_multiprocess_mode_sums_the_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In multiprocess mode a scrape answered by any process counts every process's searches
    and requests (two processes simulated by their process ids)."""
    pid = [1001]
    value_class = values.MultiProcessValue(lambda: pid[0])
    monkeypatch.setenv(service_metrics.MULTIPROC_ENV, str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", value_class)
    try:
        first = service_metrics.Metrics()
        first.search(1, 0.002)
        first.search(1, 0.003)
        first.request("POST", "/search", 200)
        pid[0] = 1002
        second = service_metrics.Metrics()
        second.search(2, 0.004)
        second.request("POST", "/search", 200)
        for answering in (first, second):
            parsed = families(answering.prometheus({"quantrieve_index_items": (7, "items")}))
            name = "quantrieve_search_duration_seconds"
            assert value(parsed, name, f"{name}_count") == 3
            assert value(parsed, "quantrieve_queries", "quantrieve_queries_total") == 4
            requests = ("quantrieve_http_requests", "quantrieve_http_requests_total")
            assert value(parsed, *requests, method="POST", route="/search", status="200") == 2
            assert value(parsed, "quantrieve_index_items") == 7
            assert "quantrieve_build_info" in parsed
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "counter_1001.db",
            "counter_1002.db",
            "histogram_1001.db",
            "histogram_1002.db",
        ]
    finally:
        value_class.close_all_files()  # type: ignore[attr-defined]


def test_workers_share_a_directory_and_stale_ones_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker of `quantrieve serve --workers N` (its options in the environment) joins the
    directory named after its parent process; those of services no longer running are
    removed; a directory set by the user is kept."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.delenv(service_metrics.MULTIPROC_ENV, raising=False)
    dead = tmp_path / f"{service_metrics.WORKERS_DIR_PREFIX}999999999-1"
    dead.mkdir()
    service_metrics._join_workers_directory()  # not a worker: nothing
    assert service_metrics.MULTIPROC_ENV not in os.environ and dead.exists()
    monkeypatch.setenv(service_metrics.WORKERS_ENV, "{}")
    service_metrics._join_workers_directory()
    joined = Path(os.environ[service_metrics.MULTIPROC_ENV])
    assert joined.is_dir() and joined.parent == tmp_path and not dead.exists()
    assert joined.name.startswith(f"{service_metrics.WORKERS_DIR_PREFIX}{os.getppid()}-")
    monkeypatch.setenv(service_metrics.MULTIPROC_ENV, "/elsewhere")
    service_metrics._join_workers_directory()
    assert os.environ[service_metrics.MULTIPROC_ENV] == "/elsewhere"


@pytest.mark.slow
def test_two_workers_report_the_whole_service(tiny_index: Path, tmp_path: Path) -> None:
    """`quantrieve serve --workers 2 --read-only`: whichever worker answers /metrics, the search
    count is every search of the service (new connections spread over both workers)."""
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port = int(sock.getsockname()[1])
    url = f"http://{HOST}:{port}"
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != service_metrics.MULTIPROC_ENV}
    env["TMPDIR"] = str(tmp_path)
    command = [sys.executable, "-m", "quantrieve", "serve", str(tiny_index), "--read-only"]
    command += ["--workers", "2", "--host", HOST, "--port", str(port)]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        pids: set[int] = set()
        while len(pids) < 2:  # both workers up: their pids seen in process_start metrics
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                httpx.get(f"{url}/health", timeout=5)
            except httpx.HTTPError:
                time.sleep(0.5)
                continue
            pids = {int(p.name.split("_")[-1][:-3]) for p in tmp_path.glob("*/counter_*.db")}
            time.sleep(0.2)
        searches = 8
        for _ in range(searches):  # a new connection each: the kernel spreads them
            body = {"embeddings": [[0.0] * TINY.dim], "k": 2}
            assert httpx.post(f"{url}/search", json=body, timeout=30).status_code == 200
        for _ in range(4):
            parsed = families(httpx.get(f"{url}/metrics", timeout=30).text)
            name = "quantrieve_search_duration_seconds"
            assert value(parsed, name, f"{name}_count") == searches
            assert value(parsed, "quantrieve_index_items") == TINY.train
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert len(list(tmp_path.glob(f"{service_metrics.WORKERS_DIR_PREFIX}*"))) == 1
