"""How evaluation and exact search grow with the database: 60k, 600k and 6M coded items.

    .venv/bin/python benchmarks/scale_growth.py --sizes 60000,600000,6000000 --rounds 3 \
        --json benchmarks/results/scale_growth.json

Random 32-bit codes (M = 8, K = 16) and 10-class labels; the work does not depend on the
values. Per size N:

- ``evaluate_s``: :func:`quantrieve.evaluate.evaluate_codes` of ``--queries`` queries (mAP@1000,
  P@N and the PR curve, every query in the curve as long as they are at most 2,000), as
  ``quantrieve evaluate`` runs it;
- ``ranking_s``: the same evaluation with the PR curve on one query (``pr_queries=1``): the
  ADC, top-k, mAP and P@N of every query, without the curve's pass over every row;
- ``search_single_ms``: median latency of one query (top-100), and ``search_qps``: throughput of
  the whole batch, through a :class:`quantrieve.pq.CodeSearcher` built beforehand, as the
  service runs it.

This machine's memory speed drifts by up to 2x between runs, so ``--rounds`` passes over all
sizes in turns, and each number is the median over the rounds (every round is kept under
``rounds``). Linear growth means a constant time per million items (``*_per_million``). The
ADC path is recorded per size: up to about 500,000 items at M = 8, K = 16 the one-hot product
(batches of more than 8 queries), above it paired-book gathers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from record import write_record
from torch import Tensor

from quantrieve.evaluate import evaluate_codes
from quantrieve.evaluate.retrieval import PR_QUERIES
from quantrieve.pq import ADCScorer, CodeSearcher


def measure(
    queries: Tensor,
    codebooks: Tensor,
    codes: Tensor,
    labels: tuple,
    searcher: CodeSearcher,
    single: int,
) -> dict[str, float]:
    """One round at one size: seconds of the evaluation with and without the PR curve, the
    median milliseconds of one search, and the seconds of the whole batch."""
    start = time.perf_counter()
    evaluate_codes(queries, codebooks, codes, *labels)
    evaluate_s = time.perf_counter() - start
    start = time.perf_counter()
    evaluate_codes(queries, codebooks, codes, *labels, pr_queries=1)
    ranking_s = time.perf_counter() - start
    latencies = []
    for i in range(single):
        start = time.perf_counter()
        searcher.search(queries[i : i + 1], 100)
        latencies.append(time.perf_counter() - start)
    start = time.perf_counter()
    searcher.search(queries, 100)
    batch_s = time.perf_counter() - start
    return {
        "evaluate_s": evaluate_s,
        "ranking_s": ranking_s,
        "search_single_ms": 1e3 * float(np.median(latencies)),
        "search_batch_s": batch_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="60000,600000,6000000")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--single", type=int, default=20, help="one-by-one queries timed")
    parser.add_argument("--rounds", type=int, default=1, help="passes over all sizes, in turns")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    m, k, d = 8, 16, 16
    codebooks = torch.randn(m, k, d, generator=g)
    queries = torch.randn(args.queries, m * d, generator=g)
    q_labels = torch.randint(0, 10, (args.queries,), generator=g)
    one_hot = torch.nn.functional.one_hot
    sizes = [int(s) for s in args.sizes.split(",")]
    data = {}
    for n in sizes:
        codes = torch.randint(0, k, (n, m), generator=g, dtype=torch.uint8)
        labels = one_hot(q_labels, 10), one_hot(torch.randint(0, 10, (n,), generator=g), 10)
        data[n] = codes, labels, CodeSearcher(codebooks, codes).prepare()
    samples: dict[int, list[dict[str, float]]] = {n: [] for n in sizes}
    for _ in range(args.rounds):
        for n in sizes:
            codes, labels, searcher = data[n]
            samples[n].append(measure(queries, codebooks, codes, labels, searcher, args.single))
            print(json.dumps({"items": n, **samples[n][-1]}), flush=True)
    rows = []
    for n in sizes:
        median = {key: float(np.median([s[key] for s in samples[n]])) for key in samples[n][0]}
        millions = n / 1e6
        onehot = ADCScorer(data[n][0], k).onehot is not None
        row = {
            "items": n,
            "queries": args.queries,
            "evaluate_path": "one-hot product" if onehot else "paired gathers",
            "evaluate_s": median["evaluate_s"],
            "evaluate_s_per_million": median["evaluate_s"] / millions,
            "pr_queries": min(args.queries, PR_QUERIES),
            "ranking_s": median["ranking_s"],
            "ranking_s_per_million": median["ranking_s"] / millions,
            "search_single_ms": median["search_single_ms"],
            "search_single_ms_per_million": median["search_single_ms"] / millions,
            "search_qps": args.queries / median["search_batch_s"],
            "search_s_per_query_per_million": median["search_batch_s"] / args.queries / millions,
            "rounds": samples[n],
        }
        rows.append(row)
    write_record(args.json, rows)


if __name__ == "__main__":
    main()
