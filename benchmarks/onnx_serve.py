"""A query service with torch against one with the exported ONNX encoder and no torch: memory,
latency and the results they give, on a labelled test set.

    quantrieve export-onnx INDEX ENCODER.onnx
    python benchmarks/onnx_serve.py INDEX --onnx ENCODER.onnx --dataset fashion-mnist \
        --data-dir /usr/share/datasets/fashion-mnist --queries 1000 \
        --json benchmarks/results/onnx/serve.json

Each service runs in its own process, read-only, one thread (the service's default), and is
asked the first ``--queries`` test images one at a time as PNG uploads (``k = 10``), the way a
client of ``POST /search`` asks (decoding, embedding, search and hits; no HTTP). The ONNX
process blocks ``import torch`` (as on the serve-only install), so its memory is that of a
process without torch. Reported per service: resident memory after start and after the
queries, median and 95th-percentile latency, P@10 of the hits (a hit is relevant when it
shares a label with the query); and between the two: the share of queries whose top 10 are
identical, and the mean overlap of their top-10 sets.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BLOCK_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "kornia", "torchvision"):
            raise ImportError(f"No module named {name!r}")
sys.meta_path.insert(0, _NoTorch())
"""


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def worker(args: argparse.Namespace) -> None:
    """One service, asked every query; writes its measurements to ``--out``."""
    from PIL import Image

    from quantrieve.serve.service import SearchService, ServeOptions, Upload

    images = np.load(args.queries_file)
    uploads = []
    for pixels in images:
        out = io.BytesIO()
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(out, "PNG")
        uploads.append(Upload("q.png", out.getvalue()))
    start = time.perf_counter()
    service = SearchService(
        args.index, ServeOptions(read_only=True, onnx=args.onnx if args.mode == "onnx" else None)
    )
    started = time.perf_counter() - start
    memory_started = rss_bytes()
    service.search(uploads=uploads[:1], k=10)  # warm-up
    seconds, hits = [], []
    for upload in uploads:
        t = time.perf_counter()
        found = service.search(uploads=[upload], k=10)
        seconds.append(time.perf_counter() - t)
        hits.append([h["item"] for h in found["queries"][0]["hits"]])
    ordered = sorted(seconds)
    Path(args.out).write_text(
        json.dumps(
            {
                "mode": args.mode,
                "torch_imported": "torch" in sys.modules,
                "start_s": round(started, 2),
                "rss_started_mb": round(memory_started / 2**20),
                "rss_after_mb": round(rss_bytes() / 2**20),
                "median_ms": round(1e3 * statistics.median(seconds), 2),
                "p95_ms": round(1e3 * ordered[int(0.95 * (len(ordered) - 1))], 2),
                "hits": hits,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("index", type=Path)
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", dest="mode", choices=["torch", "onnx"])
    parser.add_argument("--queries-file")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.mode:
        worker(args)
        return
    from quantrieve.data import read_dataset
    from quantrieve.index.pq_index import PQIndex

    test = read_dataset(args.dataset, args.data_dir)["test"]
    images, labels = test.images[: args.queries], test.labels[: args.queries]
    index = PQIndex.load(args.index)
    item_labels = dict(zip(index.item_numbers().tolist(), np.asarray(index.labels), strict=True))
    scratch = Path(tempfile.mkdtemp(prefix="onnx-serve-"))
    np.save(scratch / "queries.npy", images)
    results = {}
    for mode in ("torch", "onnx"):
        out = scratch / f"{mode}.json"
        command = [
            sys.executable,
            "-c",
            (BLOCK_TORCH if mode == "onnx" else "")
            + "import runpy, sys; sys.argv = sys.argv[1:]; "
            + f"runpy.run_path({str(Path(__file__).resolve())!r}, run_name='__main__')",
            "onnx_serve.py",
            str(args.index),
            "--onnx",
            str(args.onnx),
            "--worker",
            mode,
            "--queries-file",
            str(scratch / "queries.npy"),
            "--out",
            str(out),
        ]
        subprocess.run(command, check=True)
        results[mode] = json.loads(out.read_text())
    record: dict = {"command": " ".join(sys.argv), "queries": len(images)}
    for mode, result in results.items():
        relevant = [
            np.mean([bool((item_labels[i] & labels[q]).any()) for i in row])
            for q, row in enumerate(result["hits"])
        ]
        record[mode] = {k: v for k, v in result.items() if k != "hits"}
        record[mode]["p_at_10"] = round(float(np.mean(relevant)), 4)
    a, b = results["torch"]["hits"], results["onnx"]["hits"]
    record["identical_top10"] = round(
        float(np.mean([x == y for x, y in zip(a, b, strict=True)])), 4
    )
    record["mean_top10_overlap"] = round(
        float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b, strict=True)])), 4
    )
    print(json.dumps(record, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
