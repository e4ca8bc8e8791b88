"""How evaluation and exact search grow with the database: 60k, 600k and 6M coded items.

    .venv/bin/python benchmarks/scale_growth.py --sizes 60000,600000,6000000 \
        --json benchmarks/results/scale_growth.json

Random 32-bit codes (M = 8, K = 16) and 10-class labels; the work does not depend on the
values. Per size N:

- ``evaluate_s``: :func:`quantrieve.evaluate.evaluate_codes` of ``--queries`` queries (mAP@1000,
  P@N and the PR curve, every query in the curve as long as they are at most 2,000), as
  ``quantrieve evaluate`` runs it;
- ``ranking_s``: the same evaluation with the PR curve on one query (``pr_queries=1``): the
  ADC, top-k, mAP and P@N of every query, without the full ranking of every row the curve
  needs;
- ``search_single_ms``: median latency of one query (top-100), and ``search_qps``: throughput of
  the whole batch, through a :class:`quantrieve.pq.CodeSearcher` built beforehand, as the
  service runs it.

Linear growth means a constant time per million items (``*_per_million``). The ADC path is
printed per size: up to about 500,000 items at M = 8, K = 16 the one-hot product (batches of
more than 8 queries), above it paired-book gathers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from record import write_record

from quantrieve.evaluate import evaluate_codes
from quantrieve.pq import ADCScorer, CodeSearcher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="60000,600000,6000000")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--single", type=int, default=20, help="one-by-one queries timed")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    m, k, d = 8, 16, 16
    codebooks = torch.randn(m, k, d, generator=g)
    queries = torch.randn(args.queries, m * d, generator=g)
    q_labels = torch.randint(0, 10, (args.queries,), generator=g)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        codes = torch.randint(0, k, (n, m), generator=g, dtype=torch.uint8)
        db_labels = torch.randint(0, 10, (n,), generator=g)
        one_hot = torch.nn.functional.one_hot
        start = time.perf_counter()
        labels = one_hot(q_labels, 10), one_hot(db_labels, 10)
        result = evaluate_codes(queries, codebooks, codes, *labels)
        evaluate_s = time.perf_counter() - start
        start = time.perf_counter()
        evaluate_codes(queries, codebooks, codes, *labels, pr_queries=1)
        ranking_s = time.perf_counter() - start
        searcher = CodeSearcher(codebooks, codes).prepare()
        single = []
        for i in range(args.single):
            start = time.perf_counter()
            searcher.search(queries[i : i + 1], 100)
            single.append(time.perf_counter() - start)
        start = time.perf_counter()
        searcher.search(queries, 100)
        batch_s = time.perf_counter() - start
        onehot = ADCScorer(codes, k).onehot is not None
        path = "one-hot product" if onehot else "paired gathers"
        row = {
            "items": n,
            "queries": args.queries,
            "evaluate_path": path,
            "evaluate_s": evaluate_s,
            "evaluate_s_per_million": evaluate_s / (n / 1e6),
            "pr_queries": result.extra["pr_queries"],
            "ranking_s": ranking_s,
            "ranking_s_per_million": ranking_s / (n / 1e6),
            "search_single_ms": 1e3 * float(np.median(single)),
            "search_single_ms_per_million": 1e3 * float(np.median(single)) / (n / 1e6),
            "search_qps": args.queries / batch_s,
            "search_s_per_query_per_million": batch_s / args.queries / (n / 1e6),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        del searcher, codes, db_labels
    write_record(args.json, rows)


if __name__ == "__main__":
    main()
