"""Importing quantrieve makes OpenMP threads sleep rather than spin (a search beside a busy
process keeps its speed: benchmarks/busy_search.py), unless the user chose a policy."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Two fresh interpreters importing torch: left out of the fast subset.
pytestmark = pytest.mark.slow

PROBE = "import quantrieve, os; print(os.environ['OMP_WAIT_POLICY'])"


def _policy(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_passive_unless_the_user_set_a_policy() -> None:
    unset = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _policy(unset) == "PASSIVE"
    assert _policy({**unset, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"
