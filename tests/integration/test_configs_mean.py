"""Configs mean exactly what they say: each example of the issue, checked against an independent computation."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import runner
from conftest import run_cli
from runner.data.sources import split
from runner.errors import ConfigError
from runner.prepare.optim import make_optimizer
from runner.prepare.plan import check, validate
from runner.prepare.prepare import prepare
from runner.run.directory import read_metrics


def problems_of(cfg, machine: bool = True) -> dict[str, str]:
    with pytest.raises(ConfigError) as raised:
        check(cfg, machine=machine)
    return {p.key: p.message for p in raised.value.problems}


def optimizer_of(cfg) -> torch.optim.Optimizer:
    prepared = prepare(validate(cfg))
    return make_optimizer(prepared.model, prepared.spec.optim, prepared.plan.groups)


def test_an_added_optimizer_argument_reaches_the_optimizer(compose):
    group = optimizer_of(compose("+optim.eps=1e-15")).param_groups[0]
    assert group["eps"] == 1e-15 and group["betas"] == (0.9, 0.999)
    sgd = optimizer_of(compose("optim=sgd", "+optim.nesterov=true")).param_groups[0]
    assert sgd["nesterov"] is True and sgd["momentum"] == 0.9


def test_unknown_keys_are_refused_with_or_without_plus(compose):
    found = problems_of(compose("+trainer.frobnicate=1", "+optim.epz=1", "+data.colour=red", "+extra=1"))
    assert found["trainer.frobnicate"].startswith("unknown key")
    assert "did you mean 'eps'" in found["optim.epz"]
    assert found["data.colour"].startswith("unknown key") and found["extra"].startswith("unknown key")


def test_a_boolean_key_takes_only_a_boolean(compose):
    assert problems_of(compose("trainer.grad_stats=3"))["trainer.grad_stats"] == "expected true or false, got 3"


def test_a_mapping_override_that_would_merge_is_refused_and_custom_replaces(compose):
    with pytest.raises(ConfigError, match="keeps fc1, act1, fc2, act2, head beside it"):
        compose("+model.layers={fc: {type: Linear, in_features: 64, out_features: 10}}")
    cfg = compose("model=custom", "+model.layers={fc: {type: Linear, in_features: 64, out_features: 10}}")
    model = runner.build(cfg)
    assert [name for name, _ in model.named_children()] == ["fc"]


@pytest.mark.parametrize(("rule", "key", "words"), [
    ({"fn": "normal_", "std": -1}, "init.rules[0].std", "expected a number > 0, got -1"),
    ({"fn": "uniform_", "a": 1, "b": 0}, "init.rules[0].b", "expected a number > a (1), got 0"),
    ({"fn": "kaiming_normal_", "mode": "fan_inn"}, "init.rules[0].mode", "did you mean 'fan_in'"),
    ({"fn": "sparse_", "sparsity": 1.5, "match": "fc1.weight"}, "init.rules[0].sparsity", "expected a number in [0, 1], got 1.5"),
    ({"fn": "trunc_normal_", "std": "wide"}, "init.rules[0].std", "expected a number > 0, got 'wide'"),
    ({"fn": "orthogonal_", "match": "*.bias"}, "init.rules[0]", "orthogonal_ needs a tensor with at least 2 dims; it reaches 'fc1.bias' (128,)"),
    ({"fn": "eye_", "match": "fc1.*", "kind": "any"}, "init.rules[0]", "eye_ needs a tensor with exactly 2 dims"),
])
def test_init_rule_values_are_checked_before_any_work(compose, rule, key, words):
    cfg = compose()
    cfg.init.rules = [rule]
    assert words in problems_of(cfg)[key]


def test_a_rule_every_tensor_of_which_a_later_rule_sets_is_named_as_such(compose):
    cfg = compose()
    cfg.init.rules = [{"match": "*.weight", "fn": "zeros_"}, {"match": "*", "fn": "ones_"}]
    message = problems_of(cfg)["init.rules[0]"]
    assert "later rules set all of them (init.rules[1])" in message and "selects no tensor" not in message


@pytest.mark.parametrize(("optim", "groups", "key", "words"), [
    ("adam", [{"match": "head.*", "momentum": 0.9}, {}], "optim.param_groups[0].momentum", "adam takes no argument 'momentum'"),
    ("sgd", [{"match": "head.*", "nesterov": True, "momentum": 0.0}, {}], "optim.param_groups[0].nesterov", "needs momentum > 0"),
    ("adam", [{"name": "a", "match": "head.*"}, {"name": "a"}], "optim.param_groups[1].name", "'a' already names"),
    ("adam", [{"match": "head.*", "betas": [0.9, 1.5]}, {}], "optim.param_groups[0].betas", "expected 2 numbers in [0, 1)"),
])
def test_group_arguments_are_checked_against_the_optimizer(compose, optim, groups, key, words):
    cfg = compose(f"optim={optim}")
    cfg.optim.param_groups = groups
    assert words in problems_of(cfg)[key]


def test_named_groups_set_any_constructor_argument(compose):
    cfg = compose("optim=sgd")
    cfg.optim.param_groups = [{"name": "head", "match": "head.*", "lr": 0.5, "nesterov": True}, {"name": "body", "dampening": 0.1}]
    groups = optimizer_of(cfg).param_groups
    assert [(g["group"], g["lr"], g["nesterov"], g["dampening"]) for g in groups] == [("head", 0.5, True, 0.0), ("body", 0.05, False, 0.1)]


def test_one_error_names_problems_of_every_phase(compose, tmp_path):
    cfg = compose("trainer.batch_size=0", "data=file", f"data.path={tmp_path / 'absent.npz'}", "data.num_features=64",
                  "data.num_outputs=10", "trainer.device=cuda:7")
    cfg.init.rules = [{"match": "nothing.*", "fn": "zeros_"}]
    found = problems_of(cfg)
    assert "trainer.batch_size" in found  # spec
    assert "selects no tensor" in found["init.rules[0]"]  # plan
    assert "not available here" in found["trainer.device"]  # machine
    assert found["data.path"] == f"no such file: {tmp_path / 'absent.npz'}"  # machine: the data file


def test_nothing_to_train_is_a_config_error(compose):
    assert "no trainable tensor" in problems_of(compose("model.frozen=['*']"))["model"]


def test_load_computes_what_training_computed_without_data_or_training_device(compose, tmp_path):
    # fc1.weight becomes a non-persistent buffer set by an init rule: load must rebuild it from the seed.
    rng = np.random.default_rng(0)
    features, targets = rng.normal(size=(300, 64)).astype(np.float32), rng.integers(0, 10, 300)
    np.savez(tmp_path / "data.npz", features=features, targets=targets)
    cfg = compose("data=file", f"data.path={tmp_path / 'data.npz'}", "data.num_features=64", "data.num_outputs=10",
                  "model.buffers=[{match: fc1.weight, persistent: false}]", "trainer.max_steps=15")
    cfg.init.rules = [{"match": "fc1.weight", "kind": "buffer", "fn": "normal_", "std": 0.3}]
    summary = runner.train(cfg, tmp_path / "run")
    (tmp_path / "data.npz").unlink()  # load needs no data file
    model = runner.load(tmp_path / "run")
    assert "fc1.weight" not in model.state_dict().keys() - {k for k, _ in model.named_buffers()}
    # The validation split, rebuilt from the raw arrays with the split seed; the loss by hand.
    val = split(torch.from_numpy(features), torch.from_numpy(targets), 0.2, 0)
    with torch.no_grad():
        loss = F.cross_entropy(model(val.val_x), val.val_y).item()
    assert math.isclose(loss, summary["val_loss"], rel_tol=1e-5)


@pytest.mark.parametrize(("device", "words"), [("gpu", "expected auto, cpu, cuda, cuda:N or mps"), ("cuda:7", "is not available here")])
def test_load_validates_its_device(compose, tmp_path, device, words):
    runner.train(compose("trainer.max_steps=2"), tmp_path)
    with pytest.raises(ConfigError, match="load\\(device=...\\)") as raised:
        runner.load(tmp_path, device=device)
    assert words in str(raised.value)


def test_resume_with_dropout_is_bit_identical(compose, tmp_path):
    overrides = ["+model.layers.drop={type: Dropout, p: 0.3}", "trainer.epochs=2", "trainer.ckpt_every=10", "trainer.keep_last=10"]
    full = runner.train(compose(*overrides), tmp_path / "full")
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    for late in sorted((tmp_path / "cut" / "checkpoints").iterdir())[2:]:
        shutil.rmtree(late)
    resumed = runner.resume(tmp_path / "cut")
    assert resumed["weights_sha256"] == full["weights_sha256"]
    assert read_metrics(tmp_path / "cut" / "metrics.jsonl") == read_metrics(tmp_path / "full" / "metrics.jsonl")


def test_resume_takes_the_grammar_of_a_run(compose, tmp_path):
    runner.train(compose("trainer.max_steps=10", "trainer.ckpt_every=5"), tmp_path / "run")
    summary = runner.resume(tmp_path / "run", ["trainer.max_steps=12", "trainer.progress=off", "+optim.eps=1e-6"])
    assert summary["steps"] == 12
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "eps: 1.0e-06" in config and "progress: 'off'" in config
    again = runner.resume(tmp_path / "run", ["trainer.max_steps=14", "+optim.eps=1e-7"])  # a saved +optim arg, given anew
    assert again["steps"] == 14 and "eps: 1.0e-07" in (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="trainer.frobnicate: unknown key"):
        runner.resume(tmp_path / "run", ["+trainer.frobnicate=1"])


@pytest.mark.slow
def test_cli_resume_refuses_unknown_keys_and_another_model(tmp_path):
    first = run_cli("trainer.max_steps=4", "trainer.ckpt_every=2", "trainer.progress=off", f"hydra.run.dir={tmp_path / 'a'}")
    assert first.returncode == 0, first.stderr
    saved = (tmp_path / "a" / "config.yaml").read_bytes()
    unknown = run_cli(f"resume={tmp_path / 'a'}", "+trainer.frobnicate=1", cwd=tmp_path)
    assert unknown.returncode == 2 and "trainer.frobnicate: unknown key" in unknown.stderr
    other = run_cli(f"resume={tmp_path / 'a'}", "model=cnn", cwd=tmp_path)  # refused before the mlp checkpoint meets a cnn
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert "  model: the run was trained with model=mlp; a resumed run cannot change its model" in other.stderr
    assert (tmp_path / "a" / "config.yaml").read_bytes() == saved


def test_resume_refuses_a_model_or_init_other_than_the_trained_one_even_when_its_weights_would_load(compose, tmp_path):
    runner.train(compose("trainer.max_steps=4"), tmp_path)
    saved = (tmp_path / "config.yaml").read_bytes()
    with pytest.raises(ConfigError, match=r"model.layers.act1.type: the run was trained with model.layers.act1.type=ReLU; a resumed run"):
        runner.resume(tmp_path, ["model.layers.act1.type=GELU"])  # no tensors change: the checkpoint would load
    with pytest.raises(ConfigError, match=r"  init: the run was trained with init=default; a resumed run cannot change its init"):
        runner.resume(tmp_path, ["init=xavier"])
    assert (tmp_path / "config.yaml").read_bytes() == saved
    assert runner.resume(tmp_path, ["trainer.max_steps=6"])["steps"] == 6  # what resume is for still works


def test_init_std_on_non_square_weights_follows_fan_in_and_fan_out(compose):
    # fc1 is 64 -> 128: fan_in 64, fan_out 128, so a swap would show.
    cfg = compose()
    cfg.init.rules = [{"match": "fc1.weight", "fn": "kaiming_normal_", "mode": "fan_out", "nonlinearity": "relu"},
                      {"match": "fc2.weight", "fn": "kaiming_normal_", "mode": "fan_in", "nonlinearity": "relu"},
                      {"match": "head.weight", "fn": "xavier_normal_"}]
    model = runner.build(cfg)
    assert math.isclose(model.fc1.weight.std().item(), math.sqrt(2 / 128), rel_tol=0.05)  # fan_out = 128
    assert math.isclose(model.fc2.weight.std().item(), math.sqrt(2 / 128), rel_tol=0.05)  # fc2: 128 -> 64, fan_in = 128
    assert math.isclose(model.head.weight.std().item(), math.sqrt(2 / (64 + 10)), rel_tol=0.1)


def test_residual_adds_its_input(compose):
    cfg = compose("model=custom", "+model.layers={res: {type: Residual, layers: {fc: {type: Linear, in_features: 64, out_features: 64}}}, "
                                  "head: {type: Linear, in_features: 64, out_features: 10}}")
    model = runner.build(cfg)
    x = torch.randn(5, 64)
    weight, bias = model.res.fc.weight.detach(), model.res.fc.bias.detach()
    torch.testing.assert_close(model.res(x), x + x @ weight.T + bias)


def test_any_torch_optimizer_by_name_with_its_own_defaults(compose):
    assert "leave it out with optim.betas=null" in problems_of(compose("optim.name=rmsprop"))["optim.betas"]
    optimizer = optimizer_of(compose("optim.name=rmsprop", "optim.betas=null", "+optim.centered=true"))
    assert type(optimizer) is torch.optim.RMSprop
    group = optimizer.param_groups[0]
    assert group["centered"] is True and group["alpha"] == torch.optim.RMSprop([torch.zeros(1, requires_grad=True)]).defaults["alpha"]
