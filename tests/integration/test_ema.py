"""trainer.ema_decay: the averaged weights against a hand-computed average, ties, evaluation, resume, load."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

import runner
from runner.errors import ConfigError, RunError
from runner.prepare.plan import validate
from runner.prepare.prepare import prepare
from runner.run.directory import read_metrics

DECAY = 0.8


def test_the_average_after_k_steps_equals_the_hand_computed_one(compose, tmp_path):
    initial = prepare(validate(compose())).model.state_dict()
    # The trained weights after each step t come from runs stopped there (runs are bit-identical prefixes).
    trained = []
    for t in range(1, 6):
        runner.train(compose(f"trainer.max_steps={t}"), tmp_path / str(t))
        trained.append(runner.load(tmp_path / str(t)).state_dict())
    runner.train(compose("trainer.max_steps=5", f"trainer.ema_decay={DECAY}"), tmp_path / "ema")
    averaged = runner.load(tmp_path / "ema", ema=True).state_dict()
    for name in initial:
        expected = initial[name].clone()
        for weights in trained:
            expected = DECAY * expected + (1 - DECAY) * weights[name]
        torch.testing.assert_close(averaged[name], expected, rtol=1e-6, atol=1e-7, msg=name)
    # The raw weights are the run's own, untouched by the average.
    raw = runner.load(tmp_path / "ema").state_dict()
    assert all(torch.equal(raw[name], trained[-1][name]) for name in raw)


def test_the_average_is_evaluated_beside_the_raw_weights(compose, tmp_path):
    summary = runner.train(compose("trainer.epochs=2", f"trainer.ema_decay={DECAY}"), tmp_path)
    model, data = runner.load(tmp_path, ema=True), prepare(validate(compose())).data
    with torch.no_grad():
        out = model(data.val_x)
    loss, accuracy = F.cross_entropy(out, data.val_y).item(), (out.argmax(-1) == data.val_y).double().mean().item()
    assert summary["val_loss_ema"] == pytest.approx(loss, rel=1e-5) and summary["val_accuracy_ema"] == pytest.approx(accuracy)
    evals = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "eval"]
    assert len(evals) == 2 and evals[-1]["val_loss_ema"] == summary["val_loss_ema"] and evals[-1]["val_loss"] == summary["val_loss"]
    assert summary["val_loss_ema"] != summary["val_loss"]


def test_a_tied_tensor_is_averaged_once_and_stays_tied(compose, tmp_path):
    runner.train(compose("model=tied_mlp", "trainer.max_steps=5", f"trainer.ema_decay={DECAY}"), tmp_path / "shared")
    model = runner.load(tmp_path / "shared", ema=True)
    assert model.shared.weight is model.shared_again.weight
    # A transposed tie: the decoder reads the averaged encoder weight, transposed.
    runner.train(compose("experiment=autoencoder", "trainer.max_steps=5", f"trainer.ema_decay={DECAY}"), tmp_path / "auto")
    averaged, raw = runner.load(tmp_path / "auto", ema=True), runner.load(tmp_path / "auto")
    assert torch.equal(averaged.dec.weight, averaged.enc.weight.T)
    assert not torch.equal(averaged.enc.weight, raw.enc.weight)


def test_a_resumed_run_with_an_average_is_bit_identical(compose, tmp_path):
    overrides = ("trainer.epochs=2", f"trainer.ema_decay={DECAY}", "trainer.ckpt_every=10", "trainer.keep_last=10")
    full = runner.train(compose(*overrides), tmp_path / "full")
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    for late in sorted((tmp_path / "cut" / "checkpoints").iterdir())[2:]:  # resume from step 20, mid-epoch
        shutil.rmtree(late)
    (tmp_path / "cut" / "summary.json").unlink()
    resumed = runner.resume(tmp_path / "cut")
    assert resumed["val_loss_ema"] == full["val_loss_ema"] and resumed["weights_sha256"] == full["weights_sha256"]
    a, b = runner.load(tmp_path / "full", ema=True), runner.load(tmp_path / "cut", ema=True)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_loading_the_average_of_a_run_without_one_is_an_error(compose, tmp_path):
    runner.train(compose("trainer.max_steps=2"), tmp_path)
    with pytest.raises(RunError, match="trained without trainer.ema_decay"):
        runner.load(tmp_path, ema=True)


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.1"])
def test_a_decay_outside_zero_to_one_is_named(compose, value):
    with pytest.raises(ConfigError) as raised:
        validate(compose(f"trainer.ema_decay={value}"))
    assert "trainer.ema_decay: expected null or a number strictly between 0 and 1" in str(raised.value)


def test_an_average_added_on_resume_starts_from_the_resumed_weights(compose, tmp_path):
    runner.train(compose("trainer.max_steps=10", "trainer.ckpt_every=5", "trainer.keep_last=5"), tmp_path)
    shutil.rmtree(tmp_path / "checkpoints" / "step_0000010")
    (tmp_path / "summary.json").unlink()
    resumed = runner.resume(tmp_path, [f"trainer.ema_decay={DECAY}", "trainer.max_steps=6"])
    assert resumed["steps"] == 6
    runner.train(compose("trainer.max_steps=5"), tmp_path / "five")
    runner.train(compose("trainer.max_steps=6"), tmp_path / "six")
    five, six = runner.load(tmp_path / "five").state_dict(), runner.load(tmp_path / "six").state_dict()
    averaged = runner.load(tmp_path, ema=True).state_dict()
    for name in averaged:  # the average began at step 5's weights and took one step
        torch.testing.assert_close(averaged[name], DECAY * five[name] + (1 - DECAY) * six[name], rtol=1e-6, atol=1e-7, msg=name)
