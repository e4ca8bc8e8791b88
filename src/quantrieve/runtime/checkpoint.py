"""Checkpoint files: written atomically, read back as plain tensors and containers."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from quantrieve.errors import ModelFormatError
from quantrieve.runtime.atomic import atomic_path


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
        raise ModelFormatError(f"{path}: file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        # torch's own message repeats the path and advises weights_only=False, which would
        # run code from the file: say what it is instead.
        reason = (
            "truncated or damaged"
            if isinstance(exc, EOFError | zipfile.BadZipFile)
            else ("not a PyTorch file, or one holding more than tensors and plain containers")
        )
        raise ModelFormatError(f"{path}: not a readable quantrieve checkpoint ({reason})") from None
    if not isinstance(payload, dict):
        raise ModelFormatError(
            f"{path}: not a quantrieve checkpoint (holds {type(payload).__name__})"
        )
    return payload
