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
    adc.write_text(adc.read_text() + "\nimport quantrieve.index.pq_index  # noqa: E402\n")
    result = _lint(tmp_path, ROOT / "pyproject.toml")
    assert result.returncode != 0
    assert "quantrieve.pq.adc -> quantrieve.index.pq_index" in result.stdout


def test_the_index_modules_import_one_way(tmp_path: Path) -> None:
    """The in-memory index reading live versions (the old import circle) breaks the contract."""
    shutil.copytree(ROOT / "src" / "quantrieve", tmp_path / "quantrieve")
    memory = tmp_path / "quantrieve" / "index" / "pq_index.py"
    lazy = "\n\ndef _live():\n    from quantrieve.index.live import open_live\n    return open_live"
    memory.write_text(memory.read_text() + lazy)
    result = _lint(tmp_path, ROOT / "pyproject.toml")
    assert result.returncode != 0
    assert "quantrieve.index.pq_index -> quantrieve.index.live" in result.stdout
