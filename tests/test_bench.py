"""The benchmark runs (a smoke test at tiny sizes: it measures nothing CI could trust, and asserts no ratio)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_bench_smoke_runs_and_its_loops_do_identical_work():
    result = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--only", "1,2,3,4,7,8,11,13,14"], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 4 + 8 + 2 + 2 + 6 + 2 + 2 + 2 + 3  # header, then the rows of figures 1, 2, 3, 4, 7, 8, 11, 13, 14
    assert all("final weights bitwise equal" in row for row in table[1:5]) and "WEIGHTS DIFFER" not in result.stdout
