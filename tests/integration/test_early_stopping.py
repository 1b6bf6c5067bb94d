"""trainer.early_stopping and trainer.keep_best: when a run stops, which checkpoint is kept, exact resume."""

from __future__ import annotations

import shutil

import pytest
import torch

import runner
from runner.errors import ConfigError
from runner.prepare.plan import validate
from runner.run import checkpoint
from runner.run.directory import read_metrics

EARLY = "trainer.early_stopping={metric: val_loss, patience: 2, min_delta: 0.01}"


def _evals(run_dir) -> list[dict]:
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "eval"]


def _expected_stop(evals: list[dict], metric: str, patience: int, min_delta: float, lower_is_better: bool = True) -> tuple[int, int]:
    """The rule as the README states it, written out: (index of the eval that stops the run, index of the best)."""
    best, best_at, bad = None, None, 0
    for index, record in enumerate(evals):
        value = record[metric]
        better = best is None or (value < best - min_delta if lower_is_better else value > best + min_delta)
        if better:
            best, best_at, bad = value, index, 0
        else:
            bad += 1
            if bad == patience:
                return index, best_at
    return len(evals) - 1, best_at


def test_a_run_stops_when_val_loss_stops_improving(compose, tmp_path):
    full = runner.train(compose("trainer.epochs=40"), tmp_path / "full")  # the same run without the rule
    stopped = runner.train(compose("trainer.epochs=40", EARLY), tmp_path / "stopped")
    stop, best = _expected_stop(_evals(tmp_path / "full"), "val_loss", 2, 0.01)
    assert stop < 39  # the rule does stop this run early
    evals = _evals(tmp_path / "stopped")
    assert evals == _evals(tmp_path / "full")[: stop + 1]  # the same run, cut where the rule says
    assert stopped["steps"] == evals[-1]["step"] < full["steps"]
    assert stopped["best"] == {"metric": "val_loss", "mode": "min", "value": evals[best]["val_loss"], "step": evals[best]["step"]}
    assert stopped["stopped_early"].startswith("val_loss has not improved by more than 0.01 for 2 evaluations")
    assert full["stopped_early"] is None and full["best"] is None


def test_val_accuracy_is_watched_for_a_rise(compose, tmp_path):
    runner.train(compose("trainer.epochs=40"), tmp_path / "full")
    summary = runner.train(compose("trainer.epochs=40", "trainer.early_stopping={metric: val_accuracy, patience: 1, min_delta: 0.002}"), tmp_path / "run")
    stop, best = _expected_stop(_evals(tmp_path / "full"), "val_accuracy", 1, 0.002, lower_is_better=False)
    assert len(_evals(tmp_path / "run")) == stop + 1
    assert summary["best"]["mode"] == "max" and summary["best"]["step"] == _evals(tmp_path / "full")[best]["step"]


def test_keep_best_keeps_the_best_checkpoint_past_keep_last(compose, tmp_path):
    summary = runner.train(compose("trainer.epochs=40", EARLY, "trainer.keep_best=true", "trainer.keep_last=1", "trainer.ckpt_every=5"), tmp_path / "run")
    best = summary["best"]
    assert best["checkpoint"] == f"checkpoints/step_{best['step']:07d}" and best["step"] < summary["steps"]
    kept = [p.name for p in checkpoint.list_checkpoints(tmp_path / "run" / "checkpoints")]
    assert kept == [f"step_{best['step']:07d}", f"step_{summary['steps']:07d}"]  # the best, and keep_last=1 newest
    # It holds the weights of that step: a run stopped there by max_steps ends with the same weights.
    runner.train(compose(f"trainer.max_steps={best['step']}"), tmp_path / "short")
    short, saved = runner.load(tmp_path / "short"), runner.load(tmp_path / "short")
    checkpoint.load_weights(tmp_path / "run" / best["checkpoint"], saved)
    assert all(torch.equal(a, b) for a, b in zip(short.state_dict().values(), saved.state_dict().values()))


def test_keep_best_without_early_stopping_watches_val_loss_and_trains_on(compose, tmp_path):
    summary = runner.train(compose("trainer.epochs=4", "trainer.keep_best=true"), tmp_path)
    evals = _evals(tmp_path)
    best = min(evals, key=lambda r: r["val_loss"])
    assert summary["steps"] == evals[-1]["step"] and summary["stopped_early"] is None
    assert (summary["best"]["step"], summary["best"]["value"]) == (best["step"], best["val_loss"])


def test_a_resumed_run_stops_where_the_uninterrupted_one_does(compose, tmp_path):
    overrides = ("trainer.epochs=40", EARLY, "trainer.keep_best=true", "trainer.ckpt_every=23", "trainer.keep_last=100")
    full = runner.train(compose(*overrides), tmp_path / "full")
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    # The crash: every checkpoint after the one nearest the middle is lost.
    steps = sorted(int(p.name[5:]) for p in (tmp_path / "cut" / "checkpoints").iterdir())
    middle = steps[len(steps) // 2]
    for step in steps:
        if step > middle:
            shutil.rmtree(tmp_path / "cut" / "checkpoints" / f"step_{step:07d}")
    (tmp_path / "cut" / "summary.json").unlink()
    resumed = runner.resume(tmp_path / "cut")
    assert middle < full["steps"]
    for key in ("weights_sha256", "steps", "best", "stopped_early"):
        assert resumed[key] == full[key], key
    assert read_metrics(tmp_path / "cut" / "metrics.jsonl") == read_metrics(tmp_path / "full" / "metrics.jsonl")


@pytest.mark.parametrize("overrides, key, words", [
    (["trainer.early_stopping={metric: val_acc}"], "trainer.early_stopping.metric", "did you mean 'val_accuracy'"),
    (["data=synthetic", "data.task=regression", "trainer.early_stopping={metric: val_accuracy}"], "trainer.early_stopping.metric",
     "this run logs: val_loss, train_loss"),
    (["trainer.early_stopping={mode: up}"], "trainer.early_stopping.mode", "expected min or max, got 'up'"),
    (["trainer.early_stopping={patience: 0}"], "trainer.early_stopping.patience", "expected a whole number of evaluations >= 1, got 0"),
    (["trainer.early_stopping={min_delta: -1}"], "trainer.early_stopping.min_delta", "expected a number >= 0, got -1"),
    (["trainer.early_stopping={patients: 3}"], "trainer.early_stopping.patients", "unknown key"),
    (["trainer.early_stopping=3"], "trainer.early_stopping", "expected a mapping"),
    (["trainer.keep_best=2"], "trainer.keep_best", "expected true or false, got 2"),
])
def test_bad_early_stopping_is_named(compose, overrides, key, words):
    with pytest.raises(ConfigError) as raised:
        validate(compose(*overrides))
    assert f"{key}: " in str(raised.value) and words in str(raised.value)


def test_the_expected_stop_helper_follows_the_rule():
    evals = [{"v": v} for v in (1.0, 0.5, 0.495, 0.6, 0.4, 0.41, 0.42)]
    assert _expected_stop(evals, "v", 2, 0.01) == (3, 1)  # 0.495 is not 0.01 better than 0.5; 0.6 is worse
    assert _expected_stop(evals, "v", 3, 0.0) == (6, 4)
    assert _expected_stop(evals, "v", 5, 0.0) == (6, 4)
