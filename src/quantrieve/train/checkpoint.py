"""Checkpoint files: written atomically, read back as plain tensors and containers."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from quantrieve.atomic import atomic_path


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` so that a crash leaves either the old or the new file."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint or model file onto the CPU.

    Only tensors and plain containers are unpickled (``weights_only=True``), so a file from an
    untrusted index directory cannot run code. Errors name the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: not a readable quantrieve checkpoint ({first})") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: not a quantrieve checkpoint (holds {type(payload).__name__})")
    return payload
