"""metrics: [accuracy, top5, perplexity] and runner.register_metric: each logged value checked against
arithmetic on the trained model's outputs, written by hand here; early stopping takes any of them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import runner
from runner.data.sources import load_data
from runner.registry import tables
from runner.run.directory import read_metrics


def by_hand(run_dir, cfg) -> dict:
    data = load_data(cfg.data)
    with torch.no_grad():
        out = runner.load(run_dir)(data.val_x).double().numpy()
    y = data.val_y.numpy()
    shifted = out - out.max(1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    loss = -log_probs[np.arange(len(y)), y].mean()
    ranks = np.argsort(-out, axis=1)
    return {"val_loss": loss, "val_accuracy": (ranks[:, 0] == y).mean(), "val_top5": (ranks[:, :5] == y[:, None]).any(1).mean(),
            "val_perplexity": math.exp(loss)}


def test_each_metric_is_what_arithmetic_on_the_outputs_gives(compose, tmp_path):
    cfg = compose("metrics=[top5,perplexity,accuracy]", "trainer.max_steps=12")
    summary = runner.train(cfg, tmp_path)
    expected = by_hand(tmp_path, cfg)
    for key, value in expected.items():
        assert summary[key] == pytest.approx(value, rel=1e-5), key
    last = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "eval"][-1]
    assert [k for k in last if k.startswith("val_")] == ["val_loss", "val_top5", "val_perplexity", "val_accuracy"]  # in `metrics:` order
    assert 0 < summary["val_accuracy"] < summary["val_top5"] < 1


@pytest.fixture
def metrics_restored():
    """Leaves the metrics table as it was (other tests share this process)."""
    saved = dict(tables.METRICS)
    yield
    tables.METRICS.clear()
    tables.METRICS.update(saved)


def test_a_registered_metric_is_logged_and_drives_early_stopping(compose, tmp_path, metrics_restored):
    def margin(out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # sum over rows of (top score - second score)
        top2 = out.topk(2, dim=-1).values
        return (top2[:, 0] - top2[:, 1]).sum()

    runner.register_metric("margin", margin, mode="max")
    cfg = compose("metrics=[margin]", "trainer.epochs=3", "trainer.early_stopping={metric: val_margin, patience: 5}")
    summary = runner.train(cfg, tmp_path)
    data = load_data(cfg.data)
    with torch.no_grad():
        top2 = runner.load(tmp_path)(data.val_x).topk(2, dim=-1).values
    assert summary["val_margin"] == pytest.approx((top2[:, 0] - top2[:, 1]).mean().item(), rel=1e-5)
    evals = [r["val_margin"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "eval"]
    assert summary["best"] == {"metric": "val_margin", "mode": "max", "value": max(evals), "step": summary["best"]["step"]}
    assert json.loads((tmp_path / "summary.json").read_text())["val_margin"] == summary["val_margin"]
    with pytest.raises(ValueError, match="mode must be min or max"):
        runner.register_metric("bad", margin, mode="up")


def test_bad_metric_lists_name_the_item(compose):
    with pytest.raises(runner.ConfigError) as caught:
        runner.build(compose("metrics=[acuracy, top5, top5]", "trainer.early_stopping={metric: val_perplexity}"))
    message = str(caught.value)
    assert "metrics[0]: unknown metric 'acuracy'; expected one of accuracy, top5, perplexity; did you mean 'accuracy'?" in message
    assert "metrics[2]: top5 is listed twice" in message
    assert "trainer.early_stopping.metric: 'val_perplexity' is not a metric of this run; this run logs: val_loss, train_loss, val_top5" in message
    with pytest.raises(runner.ConfigError, match="metrics\\[0\\]: accuracy needs class ids as targets; task 'regression' has none"):
        runner.build(compose("data=synthetic", "data.task=regression", "metrics=[accuracy]"))


def test_the_sweep_report_has_a_column_per_metric_and_its_mean_per_configuration(compose, tmp_path):
    from conftest import read_csv
    from runner.sweep.report import write_report

    summaries = []
    for job, seed in (("0", 0), ("1", 1)):  # one configuration, two seeds: what `-m seed=0,1` leaves
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- seed={seed}\n")
        summaries.append(runner.train(compose("metrics=[accuracy,top5,perplexity]", "trainer.max_steps=6", f"seed={seed}"), tmp_path / job))
    write_report(tmp_path)
    rows = read_csv(tmp_path / "report.csv")
    assert list(rows[0])[5:8] == ["val_accuracy", "val_top5", "val_perplexity"]
    assert [float(r["val_top5"]) for r in rows] == pytest.approx([s["val_top5"] for s in summaries])
    group = read_csv(tmp_path / "report_groups.csv")[0]
    assert float(group["val_perplexity_mean"]) == pytest.approx((summaries[0]["val_perplexity"] + summaries[1]["val_perplexity"]) / 2)
    assert "| val_loss | val_accuracy | val_top5 | val_perplexity | train_loss |" in (tmp_path / "report.md").read_text()
