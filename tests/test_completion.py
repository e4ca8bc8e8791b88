"""Shell completion of the command line (bash and zsh scripts, commands and options)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).parent / "quantrieve"

# Each completion starts the command (a subprocess): left out of the fast subset.
pytestmark = pytest.mark.slow


def _complete(words: str, cword: int) -> list[str]:
    env = {
        **os.environ,
        "_QUANTRIEVE_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(cword),
    }
    done = subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_commands_and_options_complete() -> None:
    assert _complete("quantrieve sea", 1) == ["search"]
    assert set(_complete("quantrieve s", 1)) >= {"search", "serve", "sync"}
    assert _complete("quantrieve search INDEX --id", 3) == ["--id-prefix"]
    assert "--resume" in _complete("quantrieve train --re", 2)


def test_the_completion_script_is_printed_for_bash() -> None:
    shown = subprocess.run(
        [str(SCRIPT), "--show-completion", "bash"], capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    assert "complete -o default -F _quantrieve_completion quantrieve" in shown.stdout


def test_the_command_line_starts_without_importing_torch() -> None:
    """A TAB press or ``--help`` runs the command: it imports no torch (nor faiss, kornia,
    matplotlib), so completion answers in a fraction of a second, not several."""
    code = (
        "import sys; from quantrieve.cli import app; "
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'torch', 'faiss', 'kornia', 'matplotlib', 'fastapi'}); print(heavy)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    helped = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "serve" in helped.stdout
