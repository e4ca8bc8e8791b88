"""The layer contract (pyproject.toml, [tool.importlinter]) holds, and catches an upward import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed")


def _lint(src: Path, config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [str(LINT), "--config", str(config), "--no-cache"],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_package_keeps_its_layers() -> None:
    result = _lint(ROOT / "src", ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "src" / "quantrieve", tmp_path / "quantrieve")
    adc = tmp_path / "quantrieve" / "pq" / "adc.py"
    adc.write_text(adc.read_text() + "\nimport quantrieve.index.store  # noqa: E402\n")
    result = _lint(tmp_path, ROOT / "pyproject.toml")
    assert result.returncode != 0
    assert "quantrieve.pq.adc -> quantrieve.index.store" in result.stdout
