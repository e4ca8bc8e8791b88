"""Evaluator timing at the Fashion-MNIST protocol's size: 10,000 queries x 60,000 coded items.

    .venv/bin/python benchmarks/evaluator_speed.py [--bits 32] [--repeat 5]

Random codes, codebooks, query embeddings and 10-class labels of the protocol's size; the work
(ADC, top-k, relevance, AP, the PR curve's row sorts) does not depend on the values. Writes
benchmarks/results/evaluator_speed.json: the median of ``--repeat`` runs and every run (this
machine's timings vary by about 10% from run to run). The demo's results.json holds the same
timing on real codes ("eval_seconds").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from quantrieve.evaluate import evaluate_codes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--database", type=int, default=60_000)
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--topk", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs (median reported)")
    parser.add_argument("--out", default="benchmarks/results/evaluator_speed.json")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    books, k, d = args.bits // 4, 16, 16
    queries = torch.randn(args.queries, books * d, generator=g)
    codebooks = torch.randn(books, k, d, generator=g)
    codes = torch.randint(0, k, (args.database, books), generator=g, dtype=torch.uint8)
    q_labels = torch.nn.functional.one_hot(torch.randint(0, 10, (args.queries,), generator=g), 10)
    db_labels = torch.nn.functional.one_hot(torch.randint(0, 10, (args.database,), generator=g), 10)
    runs = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        result = evaluate_codes(queries, codebooks, codes, q_labels, db_labels, k=args.topk)
        runs.append(time.perf_counter() - start)
    out = {
        "command": " ".join(["python", *sys.argv]),
        "queries": args.queries,
        "database": args.database,
        "bits": args.bits,
        "topk": args.topk,
        "threads": torch.get_num_threads(),
        "seconds_total": float(np.median(runs)),
        "seconds_runs": runs,
        "map_at_k": result.map_at_k,
        "pr_queries": result.extra["pr_queries"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
