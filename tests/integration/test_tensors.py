"""Ties, frozen tensors and buffers: declared in YAML, verified by identity after every move, cast and load."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import runner
from conftest import model_choice, run_cli
from runner.errors import ConfigError
from runner.model.tensors import count_parameters
from runner.prepare.optim import make_optimizer
from runner.prepare.plan import validate
from runner.prepare.prepare import prepare
from runner.run import checkpoint

ONE_FEATURE = ["data=synthetic", "data.task=regression", "data.num_features=1", "data.num_outputs=1"]


def test_notes_linear_reused_four_times_gives_81_and_gradient_108(compose):
    cfg = compose(*ONE_FEATURE)
    cfg.model.layers = {
        "l1": {"type": "Linear", "in_features": 1, "out_features": 1, "bias": False},
        "l2": {"shared": "l1"}, "l3": {"shared": "l1"}, "l4": {"shared": "l1"},
    }
    cfg.init.rules = [{"match": "*.weight", "fn": "constant_", "val": 3.0}]
    model = runner.build(cfg)
    out = model(torch.ones(1, 1))
    out.sum().backward()
    assert out.item() == 81.0
    assert model.l1.weight.grad.item() == 108.0  # d(w^4)/dw = 4 w^3
    assert count_parameters(model) == {"unique": 1, "naive": 4, "trainable": 1, "frozen": 0, "buffers": 0}


def test_shared_layer_gradient_is_the_sum_of_its_uses(compose):
    model = runner.build(compose("model=tied_mlp"))
    x = torch.randn(5, 64)
    model(x).sum().backward()
    tied_grad = model.shared.weight.grad.clone()
    # The same network with two separate copies of the shared layer: the tied gradient is their sum.
    first, second = (torch.nn.Linear(8, 8) for _ in range(2))
    for copy in (first, second):
        copy.load_state_dict(model.shared.state_dict())
    untied = torch.nn.Sequential(model.fc_in, model.act1, first, model.act2, second, model.act3, model.head)
    untied.zero_grad()
    untied(x).sum().backward()
    torch.testing.assert_close(tied_grad, first.weight.grad + second.weight.grad)


def test_tensor_tie_makes_one_tensor_and_one_optimizer_entry(compose):
    prepared = prepare(validate(compose("experiment=transformer_lm")))
    model = prepared.model
    assert model.head.weight is model.embed.weight
    optimizer = make_optimizer(model, prepared.spec.optim, prepared.plan.groups)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    assert sum(p is model.embed.weight for p in params) == 1
    assert len(params) == len({id(p) for p in params}) == len(list(model.parameters()))


def test_transposed_tie_reads_the_source_transpose(compose):
    model = runner.build(compose("experiment=autoencoder"))
    assert model.dec.parametrizations.weight.original is model.enc.weight
    assert torch.equal(model.dec.weight, model.enc.weight.t())
    counts = count_parameters(model)
    assert counts["naive"] - counts["unique"] == 64 * 32


def test_transposed_tie_gradient_is_the_sum_of_both_uses(compose):
    model = runner.build(compose("experiment=autoencoder"))
    x = torch.rand(4, 64)
    model(x).sum().backward()
    enc_w = model.enc.weight.detach().clone().requires_grad_(True)
    dec_w = model.enc.weight.detach().t().clone().requires_grad_(True)
    h = torch.tanh(x @ enc_w.t() + model.enc.bias.detach())
    (h @ dec_w.t() + model.dec.bias.detach()).sum().backward()
    torch.testing.assert_close(model.enc.weight.grad, enc_w.grad + dec_w.grad.t())


@pytest.mark.parametrize("model_name", ["autoencoder", "transformer_lm", "tied_mlp"])
def test_ties_survive_cast_load_state_dict_and_checkpoints(compose, tmp_path, model_name):
    cfg = compose(model_choice(model_name), "trainer.max_steps=3")
    runner.train(cfg, tmp_path)
    prepared = prepare(validate(cfg))
    model = prepared.model
    model.to(torch.float64)
    model.load_state_dict(model.state_dict())
    checkpoint.load_weights(checkpoint.latest_checkpoint(tmp_path), model)
    from runner.model.tensors import verify_ties

    verify_ties(model, prepared.ties)  # raises if any tie is no longer one tensor
    if model_name == "transformer_lm":
        assert model.head.weight is model.embed.weight
    if model_name == "autoencoder":
        assert model.dec.parametrizations.weight.original is model.enc.weight


def test_checkpoint_stores_each_tied_tensor_once_with_the_tie_map(compose, tmp_path):
    runner.train(compose("experiment=transformer_lm", "trainer.max_steps=2"), tmp_path)
    path = checkpoint.latest_checkpoint(tmp_path) / "model.safetensors"
    with safe_open(str(path), "pt") as handle:
        keys = set(handle.keys())
        ties = json.loads(handle.metadata()["ties"])
    assert "embed.weight" in keys and "head.weight" not in keys
    assert ties == {"head.weight": "embed.weight"}
    assert "position.encoding" not in keys  # a non-persistent buffer is never saved


def test_frozen_tensors_are_bitwise_unchanged_even_with_weight_decay(compose, tmp_path):
    cfg = compose("model=frozen_features", "optim=adamw", "optim.weight_decay=0.5", "trainer.max_steps=30")
    before = runner.build(cfg).state_dict()
    runner.train(cfg, tmp_path)
    after = prepare(validate(cfg)).model
    checkpoint.load_weights(checkpoint.latest_checkpoint(tmp_path), after)
    assert torch.equal(after.hidden.weight, before["hidden.weight"]) and torch.equal(after.hidden.bias, before["hidden.bias"])
    assert torch.equal(after.proj.weight, before["proj.weight"])  # a buffer: never optimized
    assert not torch.equal(after.head.weight, before["head.weight"])
    assert not after.hidden.weight.requires_grad
    assert "proj.weight" in dict(after.named_buffers()) and "proj.weight" not in dict(after.named_parameters())


def test_normalization_buffers_are_fitted_saved_and_restored(compose, tmp_path):
    cfg = compose("model=frozen_features", "trainer.max_steps=2")
    runner.train(cfg, tmp_path)
    prepared = prepare(validate(cfg))
    fitted = prepared.model.norm.mean.clone()
    torch.testing.assert_close(fitted, prepared.data.train_x.mean(0))
    prepared.model.norm.mean.zero_()
    checkpoint.load_weights(checkpoint.latest_checkpoint(tmp_path), prepared.model)
    assert torch.equal(prepared.model.norm.mean, fitted)


def test_batchnorm_running_statistics_are_trained_buffers(compose, tmp_path):
    cfg = compose("model=cnn", "trainer.max_steps=5")
    runner.train(cfg, tmp_path)
    fresh = runner.build(cfg)
    assert torch.count_nonzero(fresh.bn1.running_mean) == 0
    checkpoint.load_weights(checkpoint.latest_checkpoint(tmp_path), fresh)
    assert torch.count_nonzero(fresh.bn1.running_mean) > 0
    assert "bn1.running_mean" not in dict(fresh.named_parameters())


def test_inspect_table_shows_kinds_and_aliases(tmp_path, compose):
    runner.train(compose("experiment=transformer_lm", "trainer.max_steps=1"), tmp_path)
    rows = {r["name"]: r for r in json.loads((tmp_path / "tensors.json").read_text())["tensors"]}
    assert rows["embed.weight"]["aliases"] == ["head.weight"]
    assert rows["position.encoding"]["kind"] == "non-persistent buffer"
    assert rows["embed.weight"]["device"] == "cpu"


@pytest.mark.parametrize("dtype", ["float64", "bfloat16"])
def test_dtype_reaches_parameters_buffers_and_batches(compose, tmp_path, dtype):
    cfg = compose("model=frozen_features", f"trainer.dtype={dtype}", "trainer.max_steps=3")
    summary = runner.train(cfg, tmp_path)
    assert summary["dtype"] == dtype
    model = runner.build(cfg)
    assert {t.dtype for t in model.state_dict().values()} == {getattr(torch, dtype)}


@pytest.mark.parametrize(("overrides", "key", "text"), [
    (["model.ties=[{target: dec.weight, source: enc.wieght}]"], "model.ties[0].source", "did you mean 'enc.weight'"),
    (["model.ties=[{target: dec.weight, source: enc.weight}]"], "model.ties[0]", "shape mismatch: target 'dec.weight' is (64, 32) but source 'enc.weight' gives (32, 64)"),
    (["model.ties=[{target: dec.bias, source: enc.bias, transpose: true}]"], "model.ties[0].transpose", "`true` transposes a 2-D tensor"),
    (["model.layers.act.type=BatchNorm1d", "+model.layers.act.num_features=32", "model.ties=[{target: act.running_mean, source: enc.bias}]"], "model.ties[0].target", "is a buffer"),
    (["model.frozen=[dec.weight]", "model.ties=[{target: dec.weight, source: enc.weight, transpose: true}]"], "model.frozen[0]", "no trainable parameter"),
    (["model.buffers=[{match: nothing.here}]"], "model.buffers[0].match", "matches no parameter"),
])
def test_bad_declarations_are_config_errors_naming_the_key(compose, overrides, key, text):
    with pytest.raises(ConfigError) as caught:
        validate(compose("experiment=autoencoder", *overrides))
    found = {p.key: p.message for p in caught.value.problems}
    assert key in found, found
    assert text in found[key]


def test_frozen_glob_reaching_one_alias_of_a_tie_is_an_error(compose):
    with pytest.raises(ConfigError, match="freezes 'embed.weight' but not its tied alias 'head.weight'"):
        validate(compose("experiment=transformer_lm", "model.frozen=[embed.weight]"))


def test_tie_cycle_is_an_error(compose):
    cfg = compose("experiment=autoencoder")
    cfg.model.ties = [{"target": "dec.bias", "source": "enc.bias"}, {"target": "enc.bias", "source": "dec.bias"}]
    cfg.model.layers.dec.out_features = 32
    cfg.model.layers.enc.out_features = 32
    with pytest.raises(ConfigError, match="cycle"):
        validate(cfg)


def test_cli_unknown_dtype_and_absent_device_exit_2(tmp_path):
    result = run_cli("trainer.dtype=float8", "trainer.device=cuda:3", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert "trainer.dtype: expected one of float32, float64, bfloat16" in result.stderr
    assert "trainer.device: device 'cuda:3' is not available here" in result.stderr


def test_shipped_tensor_models_train_end_to_end(compose, tmp_path):
    auto = runner.train(compose("experiment=autoencoder", "trainer.epochs=10"), tmp_path / "ae")
    assert auto["val_loss"] < 0.03  # pixel variance is about 0.19: it reconstructs
    lm = runner.train(compose("experiment=transformer_lm", "trainer.max_steps=60"), tmp_path / "lm")
    assert lm["val_loss"] < 3.0  # uniform guessing over 28 characters is ln 28 = 3.33
    frozen = runner.train(compose("model=frozen_features"), tmp_path / "ff")
    assert frozen["val_accuracy"] > 0.6
