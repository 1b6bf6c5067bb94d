"""Fault injection: SIGKILL a training process at random moments, checkpoint writes included.

Each time, the newest checkpoint must load and verify, and resuming from it must reach final
weights bit-identical to an uninterrupted run. A quick count runs by default; `pytest -m long`
runs many.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time

import pytest

import runner
from conftest import QUIET, REPO
from runner.run import checkpoint

pytestmark = pytest.mark.xdist_group("faults")  # one worker builds the module's shared fixture

RUN = [*QUIET, "trainer.epochs=4", "trainer.ckpt_every=3", "trainer.keep_last=2", "trainer.log_every=5", "trainer.threads=1"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return runner.train(runner.compose(RUN), tmp_path_factory.mktemp("reference"))["weights_sha256"]


def kill_then_finish(run_dir, delay: float) -> str:
    """Kills the run `delay` seconds after it starts writing checkpoints; returns the finished weights' hash."""
    process = subprocess.Popen([sys.executable, "-m", "runner", *RUN, f"hydra.run.dir={run_dir}"], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (run_dir / "checkpoints").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # start-up (imports) varies with the machine's load: start the clock at training
    time.sleep(delay)
    process.kill()  # SIGKILL: no handler, no cleanup
    process.wait()
    if checkpoint.list_checkpoints(run_dir / "checkpoints"):
        latest = checkpoint.latest_checkpoint(run_dir)
        checkpoint.verify(latest)
        runner.load(run_dir)
        return runner.resume(run_dir)["weights_sha256"]
    return runner.train(runner.compose(RUN), run_dir)["weights_sha256"]  # killed before its first checkpoint


def test_sigkill_a_few_times_then_resume_bit_identical(reference, tmp_path):
    rng = random.Random(0)
    for attempt in range(3):
        assert kill_then_finish(tmp_path / str(attempt), rng.uniform(0.0, 1.5)) == reference


@pytest.mark.long
def test_sigkill_many_times_then_resume_bit_identical(reference, tmp_path):
    rng = random.Random(1)
    for attempt in range(40):
        assert kill_then_finish(tmp_path / str(attempt), rng.uniform(0.0, 3.0)) == reference, attempt
