"""The command line as the benchmark scripts call it: ``quantrieve`` of this interpreter, run
as a user would, and the two numbers every top-10 table reads off its ``--json`` output."""

from __future__ import annotations

import subprocess
import sys
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
