"""trainer.accumulate_grad_batches: N batches per optimizer step, equal to one step on the N x batch_size batch."""

from __future__ import annotations

import shutil

import pytest
import torch

import runner
from runner.errors import ConfigError
from runner.prepare.plan import validate
from runner.run.directory import read_metrics


def _weights(run_dir):
    return runner.load(run_dir).state_dict()


@pytest.mark.parametrize("optim", ["adam", "sgd_cosine"])
def test_four_batches_of_16_equal_one_batch_of_64(compose, tmp_path, optim):
    # 30 steps cross the first epoch's end (1437 training rows: 22 steps of 64, then one of 29 rows,
    # which accumulation makes of a 16-row and a 13-row batch).
    small = runner.train(compose(f"optim={optim}", "trainer.batch_size=16", "trainer.accumulate_grad_batches=4", "trainer.max_steps=30"), tmp_path / "small")
    big = runner.train(compose(f"optim={optim}", "trainer.batch_size=64", "trainer.max_steps=30"), tmp_path / "big")
    assert small["steps"] == big["steps"] == 30 and small["epochs"] == big["epochs"] == 1
    for (name, a), b in zip(_weights(tmp_path / "small").items(), _weights(tmp_path / "big").values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert small["train_loss"] == pytest.approx(big["train_loss"], rel=1e-5)


def test_steps_logging_and_epochs_count_optimizer_steps(compose, tmp_path):
    summary = runner.train(compose("trainer.batch_size=16", "trainer.accumulate_grad_batches=4", "trainer.epochs=2", "trainer.log_every=5"), tmp_path)
    assert summary["steps"] == 2 * 23  # ceil(90 batches of 16 / 4) optimizer steps per epoch
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, *range(5, 47, 5)]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [23, 46]


def test_accumulation_is_one_with_the_plain_loop_bit_for_bit(compose, tmp_path):
    plain = runner.train(compose("trainer.max_steps=10"), tmp_path / "a")
    once = runner.train(compose("trainer.max_steps=10", "trainer.accumulate_grad_batches=1"), tmp_path / "b")
    assert plain["weights_sha256"] == once["weights_sha256"]


def test_a_resumed_run_with_accumulation_is_bit_identical(compose, tmp_path):
    overrides = ("trainer.batch_size=16", "trainer.accumulate_grad_batches=3", "trainer.epochs=2", "trainer.ckpt_every=7", "trainer.keep_last=20")
    full = runner.train(compose(*overrides), tmp_path / "full")
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    for late in sorted((tmp_path / "cut" / "checkpoints").iterdir())[3:]:  # keep steps 7, 14, 21: mid-epoch
        shutil.rmtree(late)
    (tmp_path / "cut" / "summary.json").unlink()
    resumed = runner.resume(tmp_path / "cut")
    assert resumed["weights_sha256"] == full["weights_sha256"] and resumed["train_loss"] == full["train_loss"]
    assert read_metrics(tmp_path / "cut" / "metrics.jsonl") == read_metrics(tmp_path / "full" / "metrics.jsonl")


def test_activation_statistics_cover_the_whole_accumulated_batch(compose, tmp_path):
    small = runner.train(compose("trainer.batch_size=16", "trainer.accumulate_grad_batches=4", "trainer.max_steps=1", "trainer.log_every=1"), tmp_path / "small")
    big = runner.train(compose("trainer.batch_size=64", "trainer.max_steps=1", "trainer.log_every=1"), tmp_path / "big")
    assert small["steps"] == big["steps"] == 1
    a, b = ([r for r in read_metrics(tmp_path / d / "metrics.jsonl") if r["kind"] == "train"][0] for d in ("small", "big"))
    for key in ("act_std/fc1", "act_mean/head", "grad_norm", "grad_norm/fc1.weight", "loss"):
        assert a[key] == pytest.approx(b[key], rel=1e-5), key


def test_accumulation_below_one_is_named(compose):
    with pytest.raises(ConfigError) as raised:
        validate(compose("trainer.accumulate_grad_batches=0"))
    assert "trainer.accumulate_grad_batches: expected a number > 0, got 0" in str(raised.value)
