"""The bench's equivalence check: figure 1's two loops do identical work (bitwise equal final weights), at
both of its sizes. Timings are the bench's business, not CI's; the whole bench at tiny sizes (does every
figure still run?) is behind the `long` marker."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.training_loop import SIZES, measure
from conftest import REPO


@pytest.mark.parametrize("size", sorted(SIZES))
def test_the_runner_and_the_hand_written_loop_end_with_bitwise_equal_weights(size):
    _, equal = measure([*SIZES[size], "trainer.max_steps=10"], repeats=1)
    assert equal


@pytest.mark.long
def test_bench_smoke_runs_and_its_loops_do_identical_work():
    result = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--only", "1,2,3,4,7,8,11,13,14"], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 4 + 8 + 2 + 2 + 6 + 2 + 4 + 2 + 3  # header, then the rows of figures 1, 2, 3, 4, 7, 8, 11, 13, 14
    assert all("final weights bitwise equal" in row for row in table[1:5]) and "WEIGHTS DIFFER" not in result.stdout
