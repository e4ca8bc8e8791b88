"""Bounded load test of a running `quantrieve serve`, and single-query latency against
`quantrieve search` (which loads and verifies the index and model on every call).

Sends N search requests at concurrency C (each a query image uploaded as multipart, by default
images of the index's own items fetched from /items/{i}/image), and stops by itself after N
requests or --max-seconds, whichever comes first. Reports throughput, latency percentiles,
errors (non-200 answers or failed connections) and the service's resident memory (from /stats).
Traffic goes only to --url, which must be a loopback address.

    quantrieve serve runs/demo/index --port 8765 &
    python benchmarks/serve_load.py --url http://127.0.0.1:8765 --requests 2000 \
        --concurrency 8 --compare-cli runs/demo/index --out benchmarks/results/serve/load.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    array = np.array(values) * 1e3
    return {
        "p50": round(float(np.quantile(array, 0.5)), 3),
        "p90": round(float(np.quantile(array, 0.9)), 3),
        "p99": round(float(np.quantile(array, 0.99)), 3),
        "max": round(float(array.max()), 3),
        "mean": round(float(array.mean()), 3),
    }


def fetch_queries(client: httpx.Client, items: int, count: int, seed: int) -> list[bytes]:
    """Images of ``count`` random items of the served index (what a user would upload)."""
    rng = random.Random(seed)
    out: list[bytes] = []
    while len(out) < count:
        response = client.get(f"/items/{rng.randrange(items)}/image")
        if response.status_code == 200:
            out.append(response.content)
    return out


def run_load(
    url: str, queries: list[bytes], requests: int, concurrency: int, k: int, max_seconds: float
) -> dict[str, object]:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    issued = 0
    deadline = time.monotonic() + max_seconds

    def worker(index: int) -> None:
        nonlocal issued
        with httpx.Client(base_url=url, timeout=60) as client:
            while True:
                with lock:
                    if issued >= requests or time.monotonic() > deadline:
                        return
                    issued += 1
                    n = issued
                image = queries[(n + index) % len(queries)]
                start = time.perf_counter()
                try:
                    response = client.post(
                        "/search",
                        files=[("images", ("q.png", image, "image/png"))],
                        data={"k": str(k)},
                    )
                    ok = response.status_code == 200
                    problem = "" if ok else f"{response.status_code} {response.text[:200]}"
                except httpx.HTTPError as exc:
                    ok, problem = False, repr(exc)
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    if not ok:
                        errors.append(problem)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    return {
        "requests": len(latencies),
        "concurrency": concurrency,
        "seconds": round(seconds, 3),
        "throughput_rps": round(len(latencies) / seconds, 2),
        "latency_ms": percentiles(latencies),
        "errors": len(errors),
        "error_examples": errors[:5],
        "stopped_by_time_limit": len(latencies) < requests,
    }


def single_query(url: str, query: bytes, repeats: int, k: int) -> dict[str, float]:
    """One query at a time against the service (connection kept open)."""
    times = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(repeats):
            start = time.perf_counter()
            response = client.post(
                "/search", files=[("images", ("q.png", query, "image/png"))], data={"k": str(k)}
            )
            times.append(time.perf_counter() - start)
            response.raise_for_status()
    return percentiles(times)


def cli_query(index: str, query: bytes, repeats: int, k: int) -> dict[str, float]:
    """`quantrieve search INDEX query.png -k K --json` end to end, one process per query."""
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "query.png"
        file.write_bytes(query)
        command = [sys.executable, "-m", "quantrieve", "search", index, str(file), "-k", str(k)]
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run([*command, "--json"], check=True, capture_output=True)
            times.append(time.perf_counter() - start)
    return percentiles(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--queries", type=int, default=64, help="distinct query images")
    parser.add_argument("--single", type=int, default=50, help="single-query repeats")
    parser.add_argument("--compare-cli", metavar="INDEX", help="also time `quantrieve search`")
    parser.add_argument("--cli-repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default="", help="free text stored with the results")
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    args = parser.parse_args()
    host = urlparse(args.url).hostname
    if host not in LOOPBACK:
        parser.error(f"--url must be a loopback address ({', '.join(LOOPBACK)}), got {host}")
    if args.requests < 1 or args.concurrency < 1 or args.max_seconds <= 0:
        parser.error("--requests, --concurrency and --max-seconds must be positive")

    with httpx.Client(base_url=args.url, timeout=60) as client:
        before = client.get("/stats").json()
        queries = fetch_queries(client, before["items"], args.queries, args.seed)
    single = single_query(args.url, queries[0], args.single, args.k)
    load = run_load(args.url, queries, args.requests, args.concurrency, args.k, args.max_seconds)
    with httpx.Client(base_url=args.url, timeout=60) as client:
        after = client.get("/stats").json()
    results: dict[str, object] = {
        "command": " ".join(["python", "benchmarks/serve_load.py", *sys.argv[1:]]),
        "note": args.note,
        "index": {key: before[key] for key in ("items", "bits", "num_books", "num_codewords")},
        "image_size": before["image_size"],
        "k": args.k,
        "single_query_service_ms": single,
        "load": load,
        "service_resident_memory_mb": {
            "before": round(before["resident_memory_bytes"] / 2**20, 1),
            "after": round(after["resident_memory_bytes"] / 2**20, 1),
        },
        "service_latency_ms_from_stats": after["latency_ms"],
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
        },
    }
    if args.compare_cli:
        cli = cli_query(args.compare_cli, queries[0], args.cli_repeats, args.k)
        results["single_query_cli_ms"] = cli
        results["cli_over_service_p50"] = round(cli["p50"] / single["p50"], 1)
    text = json.dumps(results, indent=2)
    sys.stdout.write(text + "\n")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if load["errors"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
