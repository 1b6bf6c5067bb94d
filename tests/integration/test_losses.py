"""`loss: {name, label_smoothing | beta | delta}`: training follows a plain PyTorch loop with the same loss,
and val_loss is the loss written out by hand; perplexity stays exp of the plain cross-entropy."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import runner
from runner.config.schema import upgraded
from runner.prepare.plan import validate
from runner.prepare.prepare import prepare

REGRESSION = ["data=synthetic", "data.task=regression", "data.num_outputs=1"]


def plain_training(cfg, loss_fn, steps: int) -> torch.nn.Module:
    """`steps` Adam steps written out in plain PyTorch, from the runner's initial weights and batch order."""
    prepared = prepare(validate(cfg))
    model, data, spec = copy.deepcopy(prepared.model), prepared.data, prepared.spec
    optimizer = torch.optim.Adam(model.parameters(), lr=dict(spec.optim.args)["lr"])
    x, y, size, done = data.train_x, data.train_y, spec.trainer.batch_size, 0
    for epoch in range(steps):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(spec.seed * 100_003 + epoch))
        for start in range(0, len(x), size):
            batch = order[start : start + size]
            loss = loss_fn(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
            if done == steps:
                return model
    return model


def outputs(run_dir, cfg) -> tuple[np.ndarray, np.ndarray]:
    data = prepare(validate(cfg)).data
    with torch.no_grad():
        return runner.load(run_dir)(data.val_x).double().numpy(), data.val_y.double().numpy()


def test_label_smoothing_trains_as_plain_pytorch_and_val_loss_is_the_smoothed_cross_entropy(compose, tmp_path):
    cfg = compose("loss={name: cross_entropy, label_smoothing: 0.1}", "trainer.max_steps=8", "metrics=[perplexity]")  # the contract's form
    summary = runner.train(cfg, tmp_path)
    expected = plain_training(cfg, lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1), 8)
    for (name, ours), theirs in zip(runner.load(tmp_path).state_dict().items(), expected.state_dict().values()):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7, msg=name)
    out, y = outputs(tmp_path, cfg)
    shifted = out - out.max(1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    nll = -log_probs[np.arange(len(y)), y.astype(int)]
    smoothed = 0.9 * nll - 0.1 * log_probs.mean(1)  # (1 - eps) one-hot + eps / classes on every class
    assert summary["val_loss"] == pytest.approx(smoothed.mean(), rel=1e-5)
    assert summary["val_perplexity"] == pytest.approx(math.exp(nll.mean()), rel=1e-5)  # not exp(val_loss)
    assert summary["val_perplexity"] != pytest.approx(math.exp(summary["val_loss"]), rel=1e-3)


def _huber(d: np.ndarray, delta: float) -> np.ndarray:
    return np.where(np.abs(d) <= delta, 0.5 * d * d, delta * (np.abs(d) - 0.5 * delta))


def _smooth_l1(d: np.ndarray, beta: float) -> np.ndarray:
    return np.where(np.abs(d) < beta, 0.5 * d * d / beta, np.abs(d) - 0.5 * beta)


@pytest.mark.parametrize("name, key, value, by_hand, torch_loss", [
    ("huber", "delta", 0.3, _huber, lambda out, y: F.huber_loss(out, y, delta=0.3)),
    ("smooth_l1", "beta", 0.3, _smooth_l1, lambda out, y: F.smooth_l1_loss(out, y, beta=0.3)),
])
def test_a_regression_loss_with_its_setting_trains_as_plain_pytorch(compose, tmp_path, name, key, value, by_hand, torch_loss):
    cfg = compose(*REGRESSION, f"loss.name={name}", f"loss.{key}={value}", "trainer.max_steps=6")
    summary = runner.train(cfg, tmp_path)
    expected = plain_training(cfg, torch_loss, 6)
    for (tensor, ours), theirs in zip(runner.load(tmp_path).state_dict().items(), expected.state_dict().values()):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7, msg=tensor)
    out, y = outputs(tmp_path, cfg)
    assert summary["val_loss"] == pytest.approx(by_hand(out - y.reshape(out.shape), value).mean(), rel=1e-5)


def test_a_saved_config_from_before_the_move_reads_trainer_loss_as_loss_name():
    saved = {"trainer": {"epochs": 3, "loss": "mse"}, "seed": 1}
    assert upgraded(saved) == {"trainer": {"epochs": 3}, "seed": 1, "loss": {"name": "mse"}}
    assert saved == {"trainer": {"epochs": 3, "loss": "mse"}, "seed": 1}  # the caller's dict is left alone


def test_a_config_file_that_still_sets_trainer_loss_is_named_with_the_file(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "old.yaml").write_text("# @package _global_\ntrainer:\n  loss: mse\n")
    with pytest.raises(runner.ConfigError, match=r"trainer.loss: moved: set loss.name instead \(in the config file experiment/old.yaml\)"):
        runner.compose([f"hydra.searchpath=[file://{tmp_path}]", "experiment=old"])


def test_a_loss_given_by_name_where_its_mapping_belongs_is_refused_with_the_key_to_set():
    # trainer.loss was a name; `loss=cross_entropy` is what its users will type.
    with pytest.raises(runner.ConfigError, match=r"loss: expected a mapping of loss settings \(name, label_smoothing, beta, delta\).*"
                                                 r"by name alone: loss.name=cross_entropy"):
        runner.compose(["loss=cross_entropy"])
