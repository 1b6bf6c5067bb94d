"""SIGINT and SIGTERM during training: the run stops after the step in progress with a checkpoint there,
and resuming it ends exactly as the uninterrupted run does (issue 24, items 1 and 2).

The signal is real: a callback sends it to this process at a chosen step, so the stop is at a known step.
"""

from __future__ import annotations

import json
import signal

import pytest

import runner
from runner.errors import Interrupted
from runner.run import checkpoint
from runner.run.directory import read_metrics


class SignalAt(runner.Callback):
    """Sends this process `number` after optimizer step `step`, `count` times: Ctrl-C, or SLURM's SIGTERM."""

    def __init__(self, step: int, number: int = signal.SIGINT, count: int = 1):
        self.step, self.number, self.count = step, number, count

    def on_step_end(self, loop, step):
        if step == self.step:
            for _ in range(self.count):
                signal.raise_signal(self.number)


def _steps(run_dir) -> list[int]:
    return [int(path.name.removeprefix("step_")) for path in checkpoint.list_checkpoints(run_dir / "checkpoints")]


# digits: 23 steps an epoch. Step 30 is in the middle of epoch 1; step 23 ends epoch 0 (its evaluation comes first).
@pytest.mark.parametrize(("step", "number", "status"), [(30, signal.SIGINT, 130), (23, signal.SIGTERM, 143)])
def test_a_signal_stops_after_the_step_with_a_checkpoint_and_the_resumed_run_equals_the_uninterrupted_one(
        compose, tmp_path, step, number, status):
    cfg = compose("trainer.max_steps=40", "trainer.log_every=5")
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    full = runner.train(cfg, tmp_path / "full")
    with pytest.raises(Interrupted) as stop:
        runner.train(cfg, tmp_path / "cut", callbacks=[SignalAt(step, number)])
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # put back
    cut = tmp_path / "cut"
    assert stop.value.exit_code == status
    assert str(stop.value) == (f"{signal.Signals(number).name}: stopped after step {step}, checkpoint saved to "
                               f"{cut / 'checkpoints' / f'step_{step:07d}'}; resume with: python -m runner resume={cut}")
    assert _steps(cut) == sorted({23, step}) and not (cut / "summary.json").exists()  # epoch 0's end, and the stop
    evals = [r["step"] for r in read_metrics(cut / "metrics.jsonl") if r["kind"] == "eval"]
    assert evals == [23]  # epoch 0's evaluation (before the stop at its last step), none in the middle of epoch 1
    resumed = runner.resume(cut)
    assert resumed["weights_sha256"] == full["weights_sha256"]
    assert read_metrics(cut / "metrics.jsonl") == read_metrics(tmp_path / "full" / "metrics.jsonl")


def test_a_second_signal_stops_at_once_without_a_checkpoint_of_that_step(compose, tmp_path):
    cfg = compose("trainer.max_steps=40", "trainer.ckpt_every=20")
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match=r"^SIGINT: received again, stopped at once, without a checkpoint") as stop:  # as a script sees Ctrl-C
        runner.train(cfg, tmp_path, callbacks=[SignalAt(30, count=2)])
    assert isinstance(stop.value, Interrupted) and stop.value.exit_code == 130
    assert _steps(tmp_path) == [20, 23]  # step 20's and epoch 0's end, intact
    assert signal.getsignal(signal.SIGINT) == handler


def test_a_signal_at_the_last_step_lets_the_run_finish_and_then_stops_the_command(compose, tmp_path):
    with pytest.raises(Interrupted, match=r"^SIGINT: the run had finished its last step \(summary.json is written\); nothing to resume"):
        runner.train(compose("trainer.max_steps=40", "trainer.plots=true"), tmp_path, callbacks=[SignalAt(40)])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 40 and _steps(tmp_path) == [23, 40] and (tmp_path / "loss.png").is_file()  # finished, plots and all


class SignalAtEval(runner.Callback):  # runs after the built-in monitor: the signal comes as early stopping decides
    def on_eval(self, loop, record):
        if record["step"] == 46:
            signal.raise_signal(signal.SIGINT)


@pytest.mark.parametrize("signalled", [SignalAtEval, lambda: SignalAt(46)], ids=["at-its-evaluation", "at-the-epoch-s-last-step"])
def test_a_signal_at_the_epoch_that_stops_early_ends_the_run_as_it_would_have(compose, tmp_path, signalled):
    # Whether the signal comes during the epoch's last step or its evaluation, early stopping ends the run there anyway.
    stopping = ["trainer.max_steps=200", "trainer.early_stopping={metric: val_loss, patience: 1, min_delta: 100.0}"]
    plain = runner.train(compose(*stopping), tmp_path / "plain")
    with pytest.raises(Interrupted, match="the run had finished its last step"):
        runner.train(compose(*stopping), tmp_path / "signalled", callbacks=[signalled()])
    summary = json.loads((tmp_path / "signalled" / "summary.json").read_text())
    assert plain["steps"] == summary["steps"] == 46 and summary["weights_sha256"] == plain["weights_sha256"]


def test_a_signal_with_loader_workers_stops_after_the_step_and_resumes_exactly(compose, tmp_path):
    # Workers ignore the signal (it reaches the whole process group); the loop stops before fetching another batch.
    cfg = compose("trainer.max_steps=40", "data.loader.num_workers=2", "trainer.log_every=5")
    full = runner.train(cfg, tmp_path / "full")
    with pytest.raises(Interrupted):
        runner.train(cfg, tmp_path / "cut", callbacks=[SignalAt(30)])
    assert _steps(tmp_path / "cut") == [23, 30]
    assert runner.resume(tmp_path / "cut")["weights_sha256"] == full["weights_sha256"]


@pytest.mark.parametrize(("every", "expected"), [(None, [23, 46, 69, 80]), (2, [46, 80]), (0, [80])])
def test_a_checkpoint_comes_at_every_nth_epoch_end_and_at_the_last_step(compose, tmp_path, every, expected):
    # 80 steps of digits: epochs end at steps 23, 46 and 69; by default (every=None) each keeps a checkpoint.
    chosen = [] if every is None else [f"trainer.ckpt_every_epochs={every}"]
    runner.train(compose("trainer.max_steps=80", "trainer.keep_last=10", *chosen), tmp_path)
    assert _steps(tmp_path) == expected
