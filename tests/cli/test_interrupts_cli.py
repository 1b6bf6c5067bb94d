"""Ctrl-C on the real command line: a process, since the point is the signal, the exit status and what the
terminal shows (issue 24, items 1 and 2). The in-process tests (tests/integration/test_interrupts.py) check
that a resumed run equals an uninterrupted one."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, run_cli
from runner.run.directory import read_metrics

QUIET = ["trainer.progress=off", "trainer.tensorboard=false", "trainer.plots=false", "trainer.threads=1"]


def _interrupt_when_training(command: list[str], metrics: Path, number: int = signal.SIGINT) -> subprocess.CompletedProcess:
    """Starts `python -m runner COMMAND`, sends `number` once metrics.jsonl shows training under way, and waits."""
    env = {**os.environ}
    env.pop("HYDRA_FULL_ERROR", None)
    process = subprocess.Popen([sys.executable, "-m", "runner", *command], cwd=REPO, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):  # step 1's record and more
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(number)
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_ctrl_c_saves_a_checkpoint_says_how_to_resume_and_exits_130(tmp_path):
    run = tmp_path / "run"
    done = _interrupt_when_training(["trainer.max_steps=1000000", "trainer.log_every=1", *QUIET, f"hydra.run.dir={run}"],
                                    run / "metrics.jsonl")
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("runner:")]
    assert lines[0] == "runner: SIGINT: stopping after this step and saving a checkpoint (SIGINT again stops at once)"
    stopped = re.fullmatch(rf"runner: SIGINT: stopped after step (\d+), checkpoint saved to {re.escape(str(run))}/checkpoints/step_(\d+); "
                           rf"resume with: python -m runner resume={re.escape(str(run))}", lines[1])
    assert stopped and int(stopped[1]) == int(stopped[2]) > 1, lines
    step = int(stopped[1])
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"][-1] == step  # log_every=1
    # The printed command, with a shorter run: it goes on from the saved step.
    resumed = run_cli(f"resume={run}", f"trainer.max_steps={step + 5}")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == step + 5
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"][-6:] == list(range(step, step + 6))


def test_sigterm_stops_a_sweep_which_the_same_command_continues(tmp_path):
    sweep = ["-m", "seed=0,1", "trainer.max_steps=1500", *QUIET, f"hydra.sweep.dir={tmp_path}"]
    done = _interrupt_when_training(sweep, tmp_path / "0" / "metrics.jsonl", signal.SIGTERM)
    assert done.returncode == 143, done.stderr
    assert "Traceback" not in done.stderr
    assert re.search(r"runner: SIGTERM: stopped after step \d+, checkpoint saved to .*/0/checkpoints/step_\d+ \(job 0 of the sweep\); "
                     r"continue the sweep by running the same command again", done.stderr), done.stderr
    assert not (tmp_path / "1").exists()  # the sweep stopped: job 1 never started
    again = run_cli(*sweep)
    assert again.returncode == 0, again.stderr
    assert "1 resumed" in (tmp_path / "report.md").read_text()
    assert [json.loads((tmp_path / job / "summary.json").read_text())["steps"] for job in ("0", "1")] == [1500, 1500]
