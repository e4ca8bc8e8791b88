"""Atomic file writes: write a temporary file in the target's folder, then rename it.

A crash leaves either the old file or the new one, never a half-written file under the final
name: the file is fsynced before the rename and its folder after it, so the rename itself
survives a power cut. Used for checkpoints, run records, splits, benchmark cells and reports.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``.

    The temporary name keeps the target's suffix (``np.save`` and friends look at it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    # mkstemp makes the file 0600; give it the mode a plain open() would (umask respected), so
    # that an index or run can be read by another account (e.g. a service user).
    os.chmod(tmp, 0o666 & ~current_umask())
    try:
        yield Path(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's file-creation mask.

    Read from ``/proc/self/status`` where Linux offers it, without changing it (other threads,
    e.g. a service writing files, never see a zero mask); elsewhere by setting and restoring
    it under a lock, which keeps this module's own readers from racing each other."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return mask


def fsync_dir(folder: str | Path) -> None:
    """Make renames inside ``folder`` durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(text: str, path: str | Path) -> Path:
    """Write text (UTF-8) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(obj: Any, path: str | Path) -> Path:
    """Write indented JSON atomically."""
    return atomic_write_text(json.dumps(obj, indent=2) + "\n", path)
