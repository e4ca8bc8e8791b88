"""What every run records: seed, config, package versions, git commit, device, time."""

from __future__ import annotations

import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("quantrieve", "torch", "kornia", "faiss-cpu", "numpy", "pillow", "typer", "rich")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a run depends on (``missing`` if absent)."""
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def git_commit(folder: str | Path | None = None) -> str:
    """Commit of the source tree (``+dirty`` if it has local changes), or ``unknown``."""
    cwd = Path(folder) if folder else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def run_record(seed: int, device: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The environment block saved as ``run.json`` in every run directory."""
    return {
        "seed": seed,
        "device": device,
        "git_commit": git_commit(),
        "versions": package_versions(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        **(extra or {}),
    }
