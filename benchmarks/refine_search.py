"""Refinement's price and worth: search latency with R re-scored results at 60k and 1M items,
and P@10 / mAP@1000 of a trained index at several R.

    python benchmarks/refine_search.py latency --json benchmarks/results/refine/latency.json
    python benchmarks/refine_search.py quality INDEX --data-dir DIR --part test \
        --json benchmarks/results/refine/quality_fashion-mnist.json

``latency``: random codes (M = 8, K = 16, 32 bits) and random float16 embeddings of 128
dimensions, ``PQIndex.search`` for k = 10, one query and a batch of 100, median of repeats, on
``--threads`` torch threads. ``--backbone-widths 256,512``: also an index refining by unit
backbone vectors of these widths (the small CNN's 256, ResNet-18's 512), re-scored against the
query's own (``--refine-source backbone``). ``quality``: an index encoded with
``--refine-depth`` (any R; the depth is set per evaluation) evaluated on labelled queries at
R = 0 (ADC alone), 10, 100, 1000. ``index-latency INDEX``: a trained index searched one query
at a time (ADC alone and refined), with the share of queries whose ADC ranking ends inside the
tie group at place R, which the refined head takes in (``quantrieve.pq.refine``).

    python benchmarks/refine_search.py index-latency INDEX --depths 0,100 --queries 300 \
        --json benchmarks/results/refine/index_latency.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

M, K, D_SUB = 8, 16, 16


def latency(args: argparse.Namespace) -> dict:
    from quantrieve.index.pq_index import PQIndex

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    books = rng.normal(size=(M, K, D_SUB)).astype(np.float32)
    rows = []
    for n in args.sizes:
        codes = rng.integers(0, K, (n, M), dtype=np.uint8)
        ids = [str(i) for i in range(n)]
        kinds = [("embedding", M * D_SUB)] + [("backbone", w) for w in args.backbone_widths]
        for source, width in kinds:
            fine = rng.normal(size=(n, width)).astype(np.float32)
            if source == "backbone":
                fine /= np.linalg.norm(fine, axis=1, keepdims=True)
            index = PQIndex(books, codes, ids, refine=fine.astype(np.float16), refine_source=source)
            index.searcher().prepare()
            for batch in (1, 100):
                queries = torch.from_numpy(rng.normal(size=(batch, M * D_SUB)).astype(np.float32))
                vectors = None
                if source == "backbone":
                    vectors = torch.nn.functional.normalize(torch.randn(batch, width), dim=1)
                for depth in args.depths:
                    if depth == 0 and source != "embedding":
                        continue  # ADC alone: the first kind's rows

                    index.search(queries, 10, refine_depth=depth, refine_queries=vectors)
                    times = []  # after one warm-up search
                    for _ in range(args.repeats):
                        begin = time.perf_counter()
                        index.search(queries, 10, refine_depth=depth, refine_queries=vectors)
                        times.append(time.perf_counter() - begin)
                    ms = statistics.median(times) * 1e3
                    row = {
                        "items": n,
                        "batch": batch,
                        "refine_depth": depth,
                        "refine_source": source if depth else None,
                        "refine_width": width if depth else 0,
                        "ms_per_batch": round(ms, 3),
                        "ms_per_query": round(ms / batch, 4),
                        "bytes_per_item": M + (2 * width if depth else 0),
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    return {"threads": args.threads, "repeats": args.repeats, "k": 10, "rows": rows}


def quality(args: argparse.Namespace) -> dict:
    import quantrieve as qr

    torch.set_num_threads(args.threads)
    retriever = qr.Retriever.load(args.index, need_index=True)
    index = retriever.index
    if index.refine is None:
        raise SystemExit(f"{args.index}: encoded without --refine-depth (no refine.npy)")
    parts = qr.read_dataset(args.dataset, args.data_dir)
    queries = parts[args.part]
    f, vectors = retriever.embed_for_index(queries)
    rows = []
    for depth in args.depths:
        result = retriever.evaluate(
            queries,
            1000,
            (10, 100),
            embeddings=f,
            refine_depth=depth,
            pr_queries=1,
            refine_queries=vectors,
        )
        row = {
            "refine_depth": depth,
            "map_at_1000": round(result.map_at_k, 4),
            "p_at_10": round(result.precision_at[10], 4),
            "p_at_100": round(result.precision_at[100], 4),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {
        "index": str(args.index),
        "queries": len(queries),
        "items": len(index),
        "bits": index.bits,
        "distance": index.distance,
        "code_usage": index.meta.get("code_usage"),
        "rows": rows,
    }


def index_latency(args: argparse.Namespace) -> dict:
    """One query at a time against a trained index: ADC alone against the refined search,
    and how often the tie group at place R goes on past it (the queries whose head grows)."""
    import quantrieve as qr

    torch.set_num_threads(args.threads)
    retriever = qr.Retriever.load(args.index, need_index=True)
    index = retriever.index
    if index.refine is None:
        raise SystemExit(f"{args.index}: encoded without --refine-depth (no refine.npy)")
    images = qr.read_dataset(args.dataset, args.data_dir)[args.part].images[: args.queries]
    f, vectors = retriever.embed_for_index(images)
    index.searcher().prepare()
    rows = []
    settings = [(d, n) for d in args.depths for n in (args.expand if d else [0])]
    for depth, expand in settings:
        opened = 0.0
        if depth and depth < len(index):
            adc_d, _ = index.search(f, depth + 1, refine_depth=0)
            opened = float((adc_d[:, depth] == adc_d[:, depth - 1]).float().mean())
        times = []
        for q in range(len(f)):
            one = None if vectors is None else vectors[q : q + 1]
            begin = time.perf_counter()
            index.search(
                f[q : q + 1], 10, refine_depth=depth, refine_queries=one, refine_expand=expand
            )
            times.append(time.perf_counter() - begin)
        row = {
            "refine_depth": depth,
            "refine_expand": expand,
            "ms_median": round(statistics.median(times) * 1e3, 3),
            "ms_p95": round(sorted(times)[int(0.95 * (len(times) - 1))] * 1e3, 3),
            "tie_goes_past_r_share": round(opened, 4),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {
        "index": str(args.index),
        "items": len(index),
        "queries": len(f),
        "refine_source": index.refine_source,
        "threads": args.threads,
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    lat = sub.add_parser("latency")
    lat.add_argument(
        "--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[60_000, 1_000_000]
    )
    lat.add_argument(
        "--depths", type=lambda s: [int(x) for x in s.split(",")], default=[0, 100, 1000]
    )
    lat.add_argument("--repeats", type=int, default=7)
    lat.add_argument(
        "--backbone-widths", type=lambda s: [int(x) for x in s.split(",") if x], default=[]
    )
    qual = sub.add_parser("quality")
    idx = sub.add_parser("index-latency")
    qual.add_argument(
        "--depths", type=lambda s: [int(x) for x in s.split(",")], default=[0, 10, 100, 1000]
    )
    idx.add_argument("--queries", type=int, default=300)
    idx.add_argument("--depths", type=lambda s: [int(x) for x in s.split(",")], default=[0, 100])
    idx.add_argument(
        "--expand",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[0],
        help="query expansions of each refined depth (refine_expand)",
    )
    for p in (qual, idx):  # a trained index and labelled queries
        p.add_argument("index", type=Path)
        p.add_argument("--dataset", default="fashion-mnist")
        p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
        p.add_argument("--part", default="test")
    for p in (lat, qual, idx):
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    run = {"latency": latency, "quality": quality, "index-latency": index_latency}
    out = run[args.command](args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
