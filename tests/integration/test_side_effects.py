"""A library call leaves the caller's process as it found it: RNG states, matplotlib's backend, the environment.

Also what a run writes on its own schedule: histograms every `hist_every` steps and the aliases record.
"""

from __future__ import annotations

import os
import random
import shutil

import matplotlib
import numpy as np
import pytest
import torch

import runner
from conftest import NaNBatchesAt
from runner.errors import RunError
from runner.run.directory import read_metrics
from runner.sweep.report import write_report

CUBLAS = "CUBLAS_WORKSPACE_CONFIG"
DROPOUT = "+model.layers.drop={type: Dropout, p: 0.5}"  # after the head: training draws from the global RNG


def _rng_states() -> tuple:
    return torch.random.get_rng_state(), random.getstate(), np.random.get_state()


def _assert_same_rng(before: tuple, after: tuple) -> None:
    assert torch.equal(before[0], after[0])
    assert before[1] == after[1]
    assert before[2][0] == after[2][0] and np.array_equal(before[2][1], after[2][1]) and before[2][2:] == after[2][2:]


def test_train_leaves_the_callers_rng_states_as_they_were(compose, tmp_path):
    torch.manual_seed(1234)
    random.seed(1234)
    np.random.seed(1234)
    torch.rand(3)  # a state no seed alone gives
    before = _rng_states()
    runner.train(compose(DROPOUT, "trainer.max_steps=5"), tmp_path)
    _assert_same_rng(before, _rng_states())
    # The caller's next draw is the one it would have had without the run.
    torch.random.set_rng_state(before[0])
    expected = torch.rand(4)
    torch.random.set_rng_state(before[0])
    runner.train(compose(DROPOUT, "trainer.max_steps=5"), tmp_path / "again")
    torch.testing.assert_close(torch.rand(4), expected, rtol=0, atol=0)


def test_dropout_draws_from_the_run_seed_whatever_the_callers_state(compose, tmp_path):
    torch.manual_seed(1)
    first = runner.train(compose(DROPOUT, "trainer.max_steps=8"), tmp_path / "a")
    torch.manual_seed(2)
    second = runner.train(compose(DROPOUT, "trainer.max_steps=8"), tmp_path / "b")
    other_seed = runner.train(compose(DROPOUT, "trainer.max_steps=8", "seed=1"), tmp_path / "c")
    assert first["weights_sha256"] == second["weights_sha256"]
    assert first["weights_sha256"] != other_seed["weights_sha256"]


def test_resume_with_dropout_is_bit_identical_and_leaves_the_callers_rng_alone(compose, tmp_path):
    overrides = [DROPOUT, "trainer.max_steps=20", "trainer.ckpt_every=10", "trainer.keep_last=5"]
    full = runner.train(compose(*overrides), tmp_path / "full")
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step_0000020")
    (tmp_path / "cut" / "summary.json").unlink()
    torch.manual_seed(99)
    random.seed(99)
    np.random.seed(99)
    before = _rng_states()
    resumed = runner.resume(tmp_path / "cut")  # restores the checkpoint's torch, Python and NumPy states inside
    _assert_same_rng(before, _rng_states())
    assert resumed["steps"] == 20 and resumed["weights_sha256"] == full["weights_sha256"]


@pytest.fixture
def pdf_backend():
    """Makes the caller's backend one the runner must not switch (the tests otherwise run on Agg, the one it used)."""
    previous = matplotlib.get_backend()
    matplotlib.use("pdf")
    yield
    matplotlib.use(previous)


def test_plots_and_the_sweep_report_leave_matplotlibs_backend_alone(compose, tmp_path, pdf_backend):
    runner.train(compose("trainer.max_steps=10", "trainer.log_every=5", "trainer.plots=true"), tmp_path / "0")
    (tmp_path / "0" / ".hydra").mkdir()
    assert matplotlib.get_backend() == "pdf"
    assert (tmp_path / "0" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "0" / "grad_norms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    write_report(tmp_path)
    assert matplotlib.get_backend() == "pdf"
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _Workspace(runner.Callback):
    """Records CUBLAS_WORKSPACE_CONFIG as the training loop saw it."""

    def __init__(self):
        self.seen = []

    def on_train_start(self, loop):
        self.seen.append(os.environ.get(CUBLAS))


def test_deterministic_runs_leave_the_cublas_workspace_alone(compose, tmp_path, monkeypatch):
    """torch gives each cuBLAS handle and stream its own workspace; ":4096:8" only slowed CUDA training (bench figure 1)."""
    monkeypatch.delenv(CUBLAS, raising=False)
    workspace = _Workspace()
    runner.train(compose("trainer.max_steps=2", "trainer.deterministic=true"), tmp_path, callbacks=[workspace])
    assert workspace.seen == [None]
    assert CUBLAS not in os.environ
    assert not torch.are_deterministic_algorithms_enabled()


def test_a_callers_cublas_workspace_is_kept_and_stays(compose, tmp_path, monkeypatch):
    monkeypatch.setenv(CUBLAS, ":16:8")
    workspace = _Workspace()
    runner.train(compose("trainer.max_steps=2", "trainer.deterministic=true"), tmp_path, callbacks=[workspace])
    assert workspace.seen == [":16:8"]
    assert os.environ[CUBLAS] == ":16:8"


def test_the_callers_deterministic_warn_only_setting_is_restored(compose, tmp_path):
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        runner.train(compose("trainer.max_steps=2", "trainer.deterministic=false"), tmp_path)
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_histograms_come_every_hist_every_steps_whatever_log_every(compose, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runner.train(compose("trainer.max_steps=20", "trainer.log_every=7", "trainer.hist_every=5", "trainer.tensorboard=true"), tmp_path)
    events = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0}).Reload()
    for tag in ("weights/fc1.weight", "grads/fc1.weight", "weights/head.bias", "grads/head.bias"):
        assert [e.step for e in events.Histograms(tag)] == [5, 10, 15, 20], tag
    assert [e.step for e in events.Scalars("train/loss")] == [1, 7, 14]


def test_aliases_are_recorded_without_gradient_statistics(compose, tmp_path):
    runner.train(compose("model=tied_mlp", "trainer.max_steps=3", "trainer.grad_stats=false"), tmp_path)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert records[0] == {"kind": "aliases", "step": 0,
                          "aliases": {"shared.weight": ["shared_again.weight"], "shared.bias": ["shared_again.bias"]}}
    assert sum(r["kind"] == "aliases" for r in records) == 1


def test_a_model_without_ties_writes_no_aliases_record(compose, tmp_path):
    runner.train(compose("trainer.max_steps=3", "trainer.grad_stats=false"), tmp_path)
    assert all(r["kind"] != "aliases" for r in read_metrics(tmp_path / "metrics.jsonl"))


def test_a_nan_before_a_histogram_step_stops_with_the_step_named(compose, tmp_path):
    # Step 2: step 1 is always logged (it would catch the NaN itself); step 3 is the first histogram step.
    with pytest.raises(RunError, match=r"^step 2: the training loss is nan"):
        runner.train(compose("trainer.max_steps=20", "trainer.log_every=7", "trainer.hist_every=3", "trainer.tensorboard=true"), tmp_path,
                     callbacks=[NaNBatchesAt(2)])
