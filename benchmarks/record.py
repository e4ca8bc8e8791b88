"""The JSON record every benchmark script writes: its command line, torch's thread count, and
its rows (plus anything the script adds)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch


def write_record(path: Path, rows: list[dict[str, Any]], **extra: Any) -> None:
    """Write ``{"command", "torch_threads", **extra, "rows"}`` to ``path`` as indented JSON."""
    record = {
        "command": " ".join(["python", *sys.argv]),
        "torch_threads": torch.get_num_threads(),
        **extra,
        "rows": rows,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
