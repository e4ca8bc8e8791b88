"""Search on a busy machine: the API, the command line and the service, beside another process
that keeps the cores busy, with OpenMP threads spinning (``OMP_WAIT_POLICY=ACTIVE``, about
what libgomp does when the variable is unset) and sleeping (``PASSIVE``, what importing
quantrieve sets unless told otherwise).

The index: ``--items`` random codes under the codebooks and model of an existing index
(``--model-index``, e.g. the demo's), written once into ``--work``. Each measurement runs in a
fresh process with the policy under test:

- ``api``: ``PQIndex.search`` of one query embedding, median of 7 (after a warm-up), by what
  the search picks (the certified 4-bit scan at this size) and by the torch gather path
  (``--path gather``: codes of other shapes, indexes under 100,000 items);
- ``cli``: ``quantrieve search INDEX query.png --json`` wall time, start-up included (median of
  3);
- ``service``: ``quantrieve serve --read-only`` on 127.0.0.1, ``POST /search`` of one
  embedding, median of 15 requests.

``--busy`` starts that many busy processes (a 2-thread torch matrix-product loop, like a
training) for the duration; with ``--busy 0`` the machine's own load is whatever it is (run it
beside a real training to measure that).

    python benchmarks/busy_search.py --model-index runs/fm-demo/index --busy 1 \
        --json benchmarks/results/busy/busy.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from record import write_record

BUSY = """
import torch
torch.set_num_threads(2)
a = torch.randn(512, 512)
while True:
    a = (a @ a).tanh_()
"""

API = """
import statistics, sys, time
import numpy as np, torch
import quantrieve as qr
import quantrieve.pq.adc as adc
if sys.argv[2] == "gather":
    adc.FASTSCAN_MIN_ITEMS = 2**62
torch.set_num_threads(int(sys.argv[3]))
index = qr.PQIndex.load(sys.argv[1], verify=False)
dim = index.codebooks.shape[0] * index.codebooks.shape[2]
query = torch.from_numpy(np.random.default_rng(0).normal(size=(1, dim)).astype(np.float32))
index.search(query, 10, refine_depth=0)
times = []
for _ in range(7):
    start = time.perf_counter()
    index.search(query, 10, refine_depth=0)
    times.append(time.perf_counter() - start)
print(1e3 * statistics.median(times))
"""


def make_index(model_index: Path, items: int, work: Path) -> Path:
    """``items`` random codes with the codebooks and model.pt of ``model_index`` (once)."""
    import numpy as np

    import quantrieve as qr

    out = work / f"index-{items}"
    if (out / "index.json").is_file():
        return out
    base = qr.PQIndex.load(model_index)
    m, k, _ = base.codebooks.shape
    rng = np.random.default_rng(0)
    codes = rng.integers(0, k, (items, m), dtype=np.uint8)
    index = qr.PQIndex(base.codebooks, codes, [f"random:{i}" for i in range(items)])
    index.meta = {key: value for key, value in base.meta.items() if key != "source"}
    index.save(out, model_file=model_index / "model.pt")
    return out


def env_for(policy: str) -> dict[str, str]:
    return {**os.environ, "OMP_WAIT_POLICY": policy}


def api_ms(index: Path, policy: str, path: str, threads: int) -> float:
    done = subprocess.run(
        [sys.executable, "-c", API, str(index), path, str(threads)],
        env=env_for(policy),
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout.split()[-1])


def cli_s(index: Path, policy: str, query: Path) -> float:
    script = Path(sys.executable).parent / "quantrieve"
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run(
            [str(script), "search", str(index), str(query), "-k", "10", "--json"],
            env=env_for(policy),
            capture_output=True,
            check=True,
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def service_ms(index: Path, policy: str, dim: int) -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = Path(sys.executable).parent / "quantrieve"
    server = subprocess.Popen(
        [str(script), "serve", str(index), "--read-only", "--port", str(port)],
        env=env_for(policy),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=5).read()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the service did not start") from None
                time.sleep(0.5)
        body = json.dumps({"embeddings": [[0.1] * dim], "k": 10}).encode()
        times = []
        for _ in range(16):
            request = urllib.request.Request(
                f"{url}/search", data=body, headers={"Content-Type": "application/json"}
            )
            start = time.perf_counter()
            urllib.request.urlopen(request, timeout=60).read()
            times.append(time.perf_counter() - start)
        return 1e3 * statistics.median(times[1:])
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-index", type=Path, required=True)
    parser.add_argument("--items", type=int, default=4_000_000)
    parser.add_argument("--work", type=Path, default=Path("runs/busy-search"))
    parser.add_argument("--busy", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the API run")
    parser.add_argument("--policies", default="ACTIVE,PASSIVE")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    index = make_index(args.model_index, args.items, args.work)
    query = args.work / "query.png"
    if not query.is_file():
        from PIL import Image

        Image.new("L", (28, 28), 128).save(query)
    import quantrieve as qr

    base = qr.PQIndex.load(index, verify=False)
    dim = base.codebooks.shape[0] * base.codebooks.shape[2]
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(args.busy)]
    rows: list[dict[str, Any]] = []
    try:
        time.sleep(2 if busy else 0)
        for policy in args.policies.split(","):
            row: dict[str, Any] = {"policy": policy, "busy_processes": args.busy}
            row["api_auto_ms"] = round(api_ms(index, policy, "auto", args.threads), 2)
            row["api_gather_ms"] = round(api_ms(index, policy, "gather", args.threads), 2)
            row["cli_search_s"] = round(cli_s(index, policy, query), 2)
            row["service_ms"] = round(service_ms(index, policy, dim), 2)
            print(row, flush=True)
            rows.append(row)
    finally:
        for process in busy:
            process.kill()
    write_record(args.json, rows, items=args.items, api_threads=args.threads)


if __name__ == "__main__":
    main()
