"""What every run records: seed, config, package versions, git commit, device, time."""

from __future__ import annotations

import os
import platform
import shlex
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


def environment(device: str | None = None) -> dict[str, Any]:
    """What can change a run's numbers besides its config: package versions, git commit,
    device (and GPU name), torch's thread count, deterministic-algorithm settings, CPU count.

    On the CPU, a run is bit-reproducible when config, seed, versions, commit and thread count
    are the same (the thread count changes the order of floating-point sums)."""
    import torch

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    env: dict[str, Any] = {
        "versions": package_versions(),
        "git_commit": git_commit(),
        "device": str(dev),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cpu_count": os.cpu_count(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if dev.type == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(dev)
        env["cudnn_benchmark"] = torch.backends.cudnn.benchmark
        env["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    return env


def command_line(argv: list[str] | None = None) -> str:
    """The command as a user would type it again: the program by its name, not by the path of
    the environment it was installed in (``/home/me/.venv/bin/quantrieve`` -> ``quantrieve``;
    ``python -m quantrieve`` for the module), then the arguments, quoted for a shell."""
    argv = sys.argv if argv is None else argv
    if not argv:
        return ""
    program = Path(argv[0]).name
    if program == "__main__.py":
        program = f"python -m {Path(argv[0]).parent.name}"
    return " ".join([program, *map(shlex.quote, argv[1:])])


def run_record(seed: int, device: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record saved as ``run.json`` in every run directory: seed, the command line and the
    :func:`environment` of the process."""
    env = environment(device)
    return {
        "seed": seed,
        "device": device,
        "git_commit": env.pop("git_commit"),
        "versions": env.pop("versions"),
        "started": env.pop("date"),
        "command": command_line(),
        "environment": env,
        **(extra or {}),
    }
