"""The evaluator of this tree against the one of an earlier commit, in turns on the same data.

    .venv/bin/python benchmarks/evaluator_ab.py --against 0e65cb4 --rounds 3 \
        --json benchmarks/results/evaluator_ab.json

This machine's speed drifts by up to 2x between runs, so a speed-up is only shown by both
versions timed in turns in one process. The earlier ``quantrieve/evaluate/retrieval.py`` is
read from git (``git show REV:...``) and swapped in for
:func:`quantrieve.evaluate.scoring.evaluate_retrieval`; everything else (ADC, top-k) is this
tree's. Data as ``benchmarks/evaluator_speed.py``: random 32-bit codes, 10 classes, 10,000
queries x 60,000 items unless ``--queries`` / ``--database`` say otherwise. Also checks that
both give the same mAP and PR curve to the last bit.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from record import write_record

from quantrieve.evaluate import scoring


def load_revision(rev: str) -> object:
    source = subprocess.run(
        ["git", "show", f"{rev}:src/quantrieve/evaluate/retrieval.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "retrieval_at_revision.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("retrieval_at_revision", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", required=True, help="git revision of the other evaluator")
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--database", type=int, default=60_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    versions = {"this tree": scoring.evaluate_retrieval}
    versions[args.against] = load_revision(args.against).evaluate_retrieval
    g = torch.Generator().manual_seed(0)
    queries = torch.randn(args.queries, 128, generator=g)
    books = torch.randn(8, 16, 16, generator=g)
    codes = torch.randint(0, 16, (args.database, 8), generator=g, dtype=torch.uint8)
    one_hot = torch.nn.functional.one_hot
    q_labels = one_hot(torch.randint(0, 10, (args.queries,), generator=g), 10)
    db_labels = one_hot(torch.randint(0, 10, (args.database,), generator=g), 10)
    seconds: dict[str, list[float]] = {name: [] for name in versions}
    results = {}
    for _ in range(args.rounds):
        for name, evaluate in versions.items():
            scoring.evaluate_retrieval = evaluate
            start = time.perf_counter()
            results[name] = scoring.evaluate_codes(queries, books, codes, q_labels, db_labels)
            seconds[name].append(time.perf_counter() - start)
    scoring.evaluate_retrieval = versions["this tree"]
    ours, theirs = results["this tree"], results[args.against]
    rows = [
        {
            "version": name,
            "queries": args.queries,
            "database": args.database,
            "seconds": runs,
            "median": float(np.median(runs)),
            "map_at_k": results[name].map_at_k,
        }
        for name, runs in seconds.items()
    ]
    same = {
        "same_map": ours.map_at_k == theirs.map_at_k,
        "same_pr_curve": ours.pr_precision == theirs.pr_precision,
    }
    for row in [*rows, same]:
        print(row, flush=True)
    write_record(args.json, rows, **same)


if __name__ == "__main__":
    main()
