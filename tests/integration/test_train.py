"""Training end to end: the default experiment's accuracy, the run directory contract, reproducibility."""

from __future__ import annotations

import json

import pytest
import torch

import runner
from runner.run import checkpoint
from runner.run.directory import read_metrics, weights_sha256

pytestmark = pytest.mark.xdist_group("train")  # one worker builds the module's shared fixture


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("default")
    summary = runner.train(runner.compose(["trainer.progress=off"]), run_dir)
    return run_dir, summary


def test_default_experiment_reaches_95_percent(default_run):
    _, summary = default_run
    assert summary["val_accuracy"] >= 0.95
    assert summary["steps"] == 20 * 23  # 1437 training images / batch 64, 20 epochs


def test_run_directory_contract(default_run):
    run_dir, summary = default_run
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "environment.json"):
        assert (run_dir / name).is_file(), name
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk == summary
    expected = {"train_loss", "val_loss", "val_accuracy", "steps", "wall_seconds", "steps_per_second", "parameters", "weights_sha256"}
    assert expected <= set(summary)
    assert summary["parameters"]["unique"] == 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10


def test_metrics_have_one_record_per_logged_step_and_per_epoch(default_run):
    run_dir, _ = default_run
    records = read_metrics(run_dir / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [1, *range(50, 461, 50)]  # step 1 (the initial weights), then every log_every
    assert len(evals) == 20 and evals[-1]["step"] == 460
    assert {"step", "epoch", "loss", "lr"} <= set(train[0])
    assert {"val_loss", "val_accuracy", "train_loss"} <= set(evals[0])


def test_final_checkpoint_holds_the_final_weights(default_run, compose):
    run_dir, summary = default_run
    latest = checkpoint.latest_checkpoint(run_dir)
    assert latest.name == "step_0000460"
    fresh = runner.build(compose())
    checkpoint.load_weights(latest, fresh)
    assert weights_sha256(fresh) == summary["weights_sha256"]


def test_same_config_and_seed_give_bit_identical_weights(compose, tmp_path):
    a = runner.train(compose("trainer.epochs=2"), tmp_path / "a")
    b = runner.train(compose("trainer.epochs=2"), tmp_path / "b")
    c = runner.train(compose("trainer.epochs=2", "seed=1"), tmp_path / "c")
    assert a["weights_sha256"] == b["weights_sha256"]
    assert a["weights_sha256"] != c["weights_sha256"]
    strip = lambda rs: [r for r in rs if "wall" not in r]
    assert strip(read_metrics(tmp_path / "a/metrics.jsonl")) == strip(read_metrics(tmp_path / "b/metrics.jsonl"))


def test_max_steps_stops_mid_epoch_and_still_evaluates(compose, tmp_path):
    summary = runner.train(compose("trainer.max_steps=30"), tmp_path)
    assert summary["steps"] == 30
    assert read_metrics(tmp_path / "metrics.jsonl")[-1]["kind"] == "eval"


@pytest.mark.parametrize(("model", "epochs", "floor"), [("cnn", 8, 0.9), ("nested", 20, 0.75), ("tied_mlp", 20, 0.75)])
def test_shipped_models_learn_digits(compose, tmp_path, model, epochs, floor):
    # nested is 9 layers deep and tied_mlp squeezes through 8 units: they learn, slower than mlp.
    summary = runner.train(compose(f"model={model}", f"trainer.epochs={epochs}", "optim.lr=3e-3"), tmp_path)
    assert summary["val_accuracy"] >= floor, summary


def test_regression_task_uses_mse(compose, tmp_path):
    summary = runner.train(compose("data=synthetic", "data.task=regression", "data.num_outputs=1", "trainer.epochs=10"), tmp_path)
    assert summary["val_accuracy"] is None
    assert summary["val_loss"] < 0.5  # targets are unit-variance: 0.5 means it learned most of it


def test_digits_are_exactly_scikit_learns():
    from sklearn.datasets import load_digits

    from runner.data.sources import _digits

    x, y = load_digits(return_X_y=True)
    ours_x, ours_y = _digits(None)
    assert torch.equal(ours_x, torch.from_numpy(x / 16.0).float()) and torch.equal(ours_y, torch.from_numpy(y).long())


def test_max_steps_zero_builds_and_checkpoints_without_training(compose, tmp_path):
    summary = runner.train(compose("trainer.max_steps=0"), tmp_path)
    assert summary["steps"] == 0 and checkpoint.latest_checkpoint(tmp_path).name == "step_0000000"


def test_the_progress_bar_shows_samples_per_second(compose, tmp_path, capfd):
    import re

    runner.train(compose("trainer.progress=bar", "trainer.epochs=2"), tmp_path)
    last = [line for line in capfd.readouterr().err.replace("\r", "\n").splitlines() if "samples/s" in line][-1]
    steps, samples = re.search(r"([\d.]+)step/s, (\d+) samples/s", last).groups()
    # 1437 training rows in 23 steps of 64 (the last one short): about 62.5 rows a step, both rates over a few seconds.
    assert 40 < float(samples) / float(steps) < 90, last
