"""The PR curve's full-row ranking, direct against bucketed, at 600k and 6M items per row.

    .venv/bin/python benchmarks/pr_ranking.py --json benchmarks/results/pr_ranking.json

Random distances and 10% relevance; 12 million distances per size (20 rows of 600k, 2 of 6M),
ranked by :func:`quantrieve.evaluate.retrieval._ranked_relevance` with the bucketing width set
out of reach (direct: two 16-bit radix passes over each whole row) or at its default (rows of
more than 2^18 items ranked in buckets of about 2^16). The two paths take turns, ``--rounds``
times; nanoseconds per item.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from record import write_record

from quantrieve.evaluate import retrieval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    default = retrieval._WIDE
    rows = []
    for n in (600_000, 6_000_000):
        count = 12_000_000 // n
        bits = (rng.random((count, n)) * 5 + 1).astype(np.float32).view(np.uint32)
        relevant = rng.random((count, n)) < 0.1
        times: dict[str, list[float]] = {"direct": [], "bucketed": []}
        for _ in range(args.rounds):
            for name, wide in (("direct", 2**62), ("bucketed", default)):
                retrieval._WIDE = wide
                start = time.perf_counter()
                retrieval._ranked_relevance(bits, relevant)
                times[name].append((time.perf_counter() - start) / (count * n) * 1e9)
        retrieval._WIDE = default
        for name, ns in times.items():
            median = float(np.median(ns))
            rows.append({"items": n, "path": name, "ns_per_item": ns, "median": median})
            print(json.dumps(rows[-1]), flush=True)
    write_record(args.json, rows)


if __name__ == "__main__":
    main()
