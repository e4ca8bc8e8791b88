"""The command line as the benchmark scripts call it: ``quantrieve`` of this interpreter, run
as a user would, and the two numbers every top-10 table reads off its ``--json`` output."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def quantrieve(*args: str) -> subprocess.CompletedProcess:
    """Run ``python -m quantrieve ARGS``; stop the script with its output if it fails."""
    done = subprocess.run(
        [sys.executable, "-m", "quantrieve", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"quantrieve {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


def scores(result: dict[str, Any]) -> dict[str, float]:
    """mAP@K and P@10 of an ``evaluate --json`` / ``baseline --json`` result, to 4 places."""
    return {
        "map": round(result["map_at_k"], 4),
        "p10": round(result["precision_at"]["10"], 4),
    }


def new_seeds(
    results: Path, seeds: str, run_seed: Callable[[int], dict[str, Any]]
) -> Iterator[dict[str, Any]]:
    """Run ``run_seed`` for each of the comma-separated ``seeds`` not yet in the JSON lines of
    ``results``, appending each record as it is made (a stopped script resumes); yield them."""
    done = set()
    if results.exists():
        done = {json.loads(line)["seed"] for line in results.open() if line.strip()}
    results.parent.mkdir(parents=True, exist_ok=True)
    for seed in (int(s) for s in seeds.split(",")):
        if seed in done:
            continue
        record = run_seed(seed)
        with results.open("a") as out:
            out.write(json.dumps(record) + "\n")
        yield record
