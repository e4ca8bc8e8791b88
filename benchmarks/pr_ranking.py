"""The PR curve's cost per item: the exact bounded curve against a full ranking of every row.

    .venv/bin/python benchmarks/pr_ranking.py --json benchmarks/results/pr_ranking.json

Rows of 60k, 600k and 6M items, 12 million distances per size (200, 20 and 2 rows), 10% of the
items relevant, two kinds of rows: ``random`` distances, and ``signal`` (relevant items nearer
by up to half the range, as after training). Per size and kind, in turns, ``--rounds`` times:

- ``curve``: :func:`quantrieve.evaluate.interpolated_precision`, as the evaluator runs it (the
  rows spread over torch's threads), which ranks only the distance buckets its bounds cannot
  settle; ``ranked_fraction`` is the share of items it ranks;
- ``full_ranking``: two stable 16-bit radix passes over each whole row on the same threads,
  the ranking alone that a curve from full rankings needs first (the evaluator's path before
  the bounds, for rows up to 2^18 items).

Nanoseconds per item (median over rounds). Linear growth means a constant cost per item.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from record import write_record

from quantrieve.evaluate import interpolated_precision, retrieval


def radix_rank(bits: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Relevance of each row in (distance, column) order: two stable 16-bit radix passes."""
    order = np.argsort((bits & 0xFFFF).astype(np.uint16), axis=1, kind="stable")
    high = np.take_along_axis((bits >> 16).astype(np.uint16), order, 1)
    rel = np.take_along_axis(relevant, order, 1)
    return np.take_along_axis(rel, np.argsort(high, axis=1, kind="stable"), 1)


def full_ranking(bits: np.ndarray, relevant: np.ndarray, pool: ThreadPoolExecutor) -> None:
    bounds = np.linspace(0, len(bits), torch.get_num_threads() + 1).astype(int)
    blocks = [slice(a, b) for a, b in itertools.pairwise(bounds) if b > a]
    list(pool.map(lambda s: radix_rank(bits[s], relevant[s]), blocks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="60000,600000,6000000")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    sort_chosen = retrieval._sort_chosen
    ranked: list[int] = []

    def counting(keys: np.ndarray) -> np.ndarray:
        ranked.append(len(keys))
        return sort_chosen(keys)

    rows = []
    with ThreadPoolExecutor(torch.get_num_threads()) as pool:
        sizes = [int(s) for s in args.sizes.split(",")]
        for n, kind in itertools.product(sizes, ("random", "signal")):
            count = max(1, 12_000_000 // n)
            relevant = rng.random((count, n)) < 0.1
            dist = (rng.random((count, n)) * 30 + 10).astype(np.float32)
            if kind == "signal":
                dist -= relevant * (rng.random((count, n)) * 15).astype(np.float32)
            bits = dist.view(np.uint32)
            times: dict[str, list[float]] = {"curve": [], "full_ranking": []}
            for _ in range(args.rounds):
                ranked.clear()
                retrieval._sort_chosen = counting
                start = time.perf_counter()
                interpolated_precision(torch.from_numpy(dist), torch.from_numpy(relevant), 20)
                times["curve"].append((time.perf_counter() - start) / (count * n) * 1e9)
                retrieval._sort_chosen = sort_chosen
                start = time.perf_counter()
                full_ranking(bits, relevant, pool)
                times["full_ranking"].append((time.perf_counter() - start) / (count * n) * 1e9)
            fraction = sum(ranked) / (count * n)
            for name, ns in times.items():
                row = {"items": n, "rows": kind, "path": name, "ns_per_item": ns}
                row["median"] = float(np.median(ns))
                if name == "curve":
                    row["ranked_fraction"] = fraction
                rows.append(row)
                print(json.dumps(row), flush=True)
    write_record(args.json, rows)


if __name__ == "__main__":
    main()
