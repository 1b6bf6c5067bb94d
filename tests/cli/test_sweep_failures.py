"""Failures are told apart and counted: a sweep whose jobs all failed exits 1, a bug keeps its traceback,
and only a failed write into the run directory is reported as one."""

from __future__ import annotations

import errno
import json
import os

import pytest

import runner
from conftest import TINY, run_cli
from runner import cli
from runner.errors import RunError
from runner.prepare.plan import validate
from runner.prepare.prepare import prepare
from runner.run import checkpoint
from runner.run.directory import RunDirWriteError
from runner.training import run as training

JOB = [*TINY, "trainer.max_steps=3", "trainer.log_every=3"]


def _report(sweep_dir) -> str:
    return (sweep_dir / "report.md").read_text()


@pytest.mark.slow
def test_a_sweep_whose_jobs_all_fail_exits_1_and_counts_them(tmp_path):
    result = run_cli("-m", "trainer.batch_size=0,-1", *JOB, f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 1, result.stderr
    assert f"runner: sweep: 2 of 2 jobs failed (see {tmp_path / 'report.md'})" in result.stderr.splitlines()
    assert "\n2 of 2 jobs failed.\n" in _report(tmp_path)
    assert [json.loads((tmp_path / job / "error.json").read_text())["error"] for job in ("0", "1")] == [
        "config error:\n  trainer.batch_size: expected a number > 0, got 0",
        "config error:\n  trainer.batch_size: expected a number > 0, got -1",
    ]


@pytest.mark.slow
def test_a_joblib_sweep_whose_jobs_all_fail_exits_1_not_2(tmp_path):
    # The jobs run in worker processes, so this process never starts a task: the exit must still be 1.
    result = run_cli("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "trainer.batch_size=0,-1", *JOB, f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 1, result.stderr
    assert "runner: sweep: 2 of 2 jobs failed" in result.stderr


@pytest.mark.slow
def test_a_sweep_with_one_good_job_exits_0_and_still_counts_the_failure(tmp_path):
    result = run_cli("-m", "trainer.batch_size=16,-1", *JOB, f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    assert f"runner: sweep: 1 of 2 jobs failed (see {tmp_path / 'report.md'})" in result.stderr.splitlines()
    assert "\n1 of 2 jobs failed.\n" in _report(tmp_path)
    assert json.loads((tmp_path / "0" / "summary.json").read_text())["steps"] == 3


@pytest.mark.slow
def test_a_sweep_without_failures_says_none_failed_and_prints_no_count(tmp_path):
    result = run_cli("-m", "seed=0,1", *JOB, f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    assert "jobs failed" not in result.stderr
    assert "\n0 of 2 jobs failed.\n" in _report(tmp_path)


def _explode(cfg, run_dir):
    raise ValueError("bad value\nsecond line of the message")


def test_an_unexpected_error_in_a_sweep_job_keeps_its_traceback(compose, tmp_path, monkeypatch):
    monkeypatch.setattr(runner.api, "sweep_job", _explode)
    assert cli._sweep_job(compose(), tmp_path) == float("inf")
    record = json.loads((tmp_path / "error.json").read_text())
    assert record["error"] == "ValueError: bad value"
    lines = record["traceback"].splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[-2:] == ["ValueError: bad value", "second line of the message"]
    assert f'File "{__file__}", line' in record["traceback"] and "in _explode" in record["traceback"]


def test_an_expected_failure_in_a_sweep_job_has_its_message_and_no_traceback(compose, tmp_path):
    assert cli._sweep_job(compose("trainer.batch_size=0"), tmp_path) == float("inf")
    record = json.loads((tmp_path / "error.json").read_text())
    assert record == {"error": "config error:\n  trainer.batch_size: expected a number > 0, got 0"}


def _prepared(compose, *overrides):
    return prepare(validate(compose(*overrides)))


def test_an_oserror_that_is_no_write_passes_through_training_unchanged(compose, tmp_path):
    class LostPeer(runner.Callback):  # what gloo raises mid-run when a peer goes away
        def on_step_end(self, loop, step):
            raise ConnectionResetError(errno.ECONNRESET, os.strerror(errno.ECONNRESET))

    with pytest.raises(ConnectionResetError) as raised:
        runner.train(compose("trainer.max_steps=2"), tmp_path, callbacks=[LostPeer()])
    assert not isinstance(raised.value, RunError)


def test_a_metrics_file_that_cannot_be_written_is_a_run_dir_write_error(compose, tmp_path):
    (tmp_path / "metrics.jsonl").mkdir()  # opening it for writing fails: EISDIR
    with pytest.raises(RunDirWriteError) as raised:
        training.run_training(_prepared(compose, "trainer.max_steps=2"), tmp_path)
    assert raised.value.run_dir == tmp_path and raised.value.path == tmp_path / "metrics.jsonl"
    assert str(raised.value) == f"cannot write the run directory {tmp_path}: Is a directory ({tmp_path / 'metrics.jsonl'})"


def test_a_disk_full_checkpoint_is_a_run_dir_write_error(compose, tmp_path, monkeypatch):
    real = checkpoint.os.replace

    def full(src, dst):
        if "step_" in str(dst):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", full)
    with pytest.raises(RunDirWriteError) as raised:
        training.run_training(_prepared(compose, "trainer.max_steps=2"), tmp_path)
    assert raised.value.run_dir == tmp_path
    assert raised.value.path == tmp_path / "checkpoints" / "step_0000002"
    assert "No space left on device" in str(raised.value)
    assert not list((tmp_path / "checkpoints").iterdir())  # the temporary directory is gone too
