"""Compare one cell of two benchmark folders seed by seed: a baseline and a candidate change.

Usage:
    python benchmarks/compare_runs.py BASE CANDIDATE [--method hqc] [--bits 32] [--json OUT]

For every seed both folders finished, prints the best validation mAP (the model-selection
number: the decision to adopt a change is made on it), the test mAP@K of that model, and the
paired differences candidate minus baseline: mean, sample sd, paired t and seeds ahead.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from record import write_record

from quantrieve.experiments.grid import cell_name


def _cells(folder: Path, method: str, bits: int) -> dict[int, dict[str, Any]]:
    """Finished cells of one method and code length, by seed."""
    cells = {}
    for path in sorted((folder / "cells").glob(f"{cell_name(method, bits)}*.json")):
        cell = json.loads(path.read_text())
        if cell.get("method") == method and cell.get("bits") == bits:
            cells[int(cell.get("seed") or 0)] = cell
    return cells


def _summary(diffs: list[float]) -> dict[str, Any]:
    """Mean, sample sd, paired t (mean / (sd / sqrt(n))) and count ahead of the differences."""
    mean = statistics.fmean(diffs)
    sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    t = mean / (sd / len(diffs) ** 0.5) if sd > 0 else None
    return {"mean": mean, "sd": sd, "t": t, "ahead": sum(d > 0 for d in diffs), "n": len(diffs)}


def _fmt(stats: dict[str, Any]) -> str:
    t = "–" if stats["t"] is None else f"{stats['t']:.1f}"
    return (
        f"{stats['mean']:+.4f} (sd {stats['sd']:.4f}, t {t}, ahead on {stats['ahead']} of "
        f"{stats['n']})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path)
    parser.add_argument("candidate", type=Path)
    parser.add_argument("--method", default="hqc")
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    base = _cells(args.base, args.method, args.bits)
    candidate = _cells(args.candidate, args.method, args.bits)
    seeds = sorted(set(base) & set(candidate))
    if not seeds:
        raise SystemExit(f"no seed of {args.method} at {args.bits} bits is finished in both")
    rows = []
    print("| seed | base: best val (epoch) | candidate | base: test mAP | candidate |")
    print("|---|---|---|---|---|")
    for seed in seeds:
        b, c = base[seed], candidate[seed]
        row = {
            "seed": seed,
            "base_val": b["train"]["best_val_map"],
            "base_epoch": b["train"]["best_epoch"],
            "candidate_val": c["train"]["best_val_map"],
            "candidate_epoch": c["train"]["best_epoch"],
            "base_test": b["result"]["map_at_k"],
            "candidate_test": c["result"]["map_at_k"],
            "k": c["result"]["k"],
        }
        rows.append(row)
        print(
            f"| {seed} | {row['base_val']:.4f} ({row['base_epoch']}) | "
            f"{row['candidate_val']:.4f} ({row['candidate_epoch']}) | "
            f"{row['base_test']:.4f} | {row['candidate_test']:.4f} |"
        )
    means = {
        key: statistics.fmean(r[key] for r in rows)
        for key in ("base_val", "candidate_val", "base_test", "candidate_test")
    }
    val = _summary([r["candidate_val"] - r["base_val"] for r in rows])
    test = _summary([r["candidate_test"] - r["base_test"] for r in rows])
    print(f"\nmeans over {len(rows)} seeds: " + ", ".join(f"{k} {v:.4f}" for k, v in means.items()))
    print(f"validation, candidate minus base: {_fmt(val)}")
    print(f"test mAP@{rows[0]['k']}, candidate minus base: {_fmt(test)}")
    if args.json:
        write_record(
            args.json,
            rows,
            base=str(args.base),
            candidate=str(args.candidate),
            means=means,
            validation_difference=val,
            test_difference=test,
        )


if __name__ == "__main__":
    main()
