"""Init rules on a transposed tie's target see the target's layout: its name, shape, fans and indices.

`dec.weight` is `enc.weight` transposed (one stored tensor); `conv2.weight` is `conv1.weight`
transposed on dims [0, 1]. Each expected value is written here in plain PyTorch on the transpose.
"""

from __future__ import annotations

import math

import pytest
import torch

import runner
from runner.errors import ConfigError
from runner.prepare.plan import validate
from runner.prepare.prepare import prepare

AUTOENCODER = ("experiment=autoencoder",)  # enc (32, 64); dec.weight reads enc.weight.T, (64, 32)
CONV = (  # conv1 (5, 3, 3, 3); conv2.weight reads conv1.weight.transpose(0, 1), (3, 5, 3, 3)
    "model=custom",
    "data.name=synthetic", "data.task=regression", "data.num_features=48", "data.num_outputs=48",
    "+model.layers={image: {type: Unflatten, dim: 1, unflattened_size: [3, 4, 4]},"
    " conv1: {type: Conv2d, in_channels: 3, out_channels: 5, kernel_size: 3, padding: 1, bias: false},"
    " conv2: {type: Conv2d, in_channels: 5, out_channels: 3, kernel_size: 3, padding: 1, bias: false},"
    " flat: {type: Flatten}}",
    "model.ties=[{target: conv2.weight, source: conv1.weight, transpose: [0, 1]}]",
)
# (overrides, stored name, target name, dims the target swaps)
CASES = {
    "2-D": (AUTOENCODER, "enc.weight", "dec.weight", (0, 1)),
    "4-D": (CONV, "conv1.weight", "conv2.weight", (0, 1)),
}


def _weight(model: torch.nn.Module, name: str) -> torch.Tensor:
    return model.get_parameter(name).detach().clone()


@pytest.mark.parametrize("case", CASES)
def test_fill_with_an_index_on_the_target_fills_the_targets_row(compose, case):
    overrides, stored, target, dims = CASES[case]
    before = _weight(runner.build(compose(*overrides, "init.rules=[]")), stored)
    only_target = runner.build(compose(*overrides, f"init.rules=[{{match: '{target.split('.')[0]}.*', fn: fill, index: [0], value: 1.0}}]"))
    expected = before.clone()
    expected.transpose(*dims)[0] = 1.0  # by hand: the target's row 0
    assert torch.equal(_weight(only_target, stored), expected)
    assert torch.equal(only_target.get_submodule(target.rpartition(".")[0]).weight[0], torch.ones_like(expected.transpose(*dims)[0]))
    # A rule that reaches the stored name (here: both names) sees the stored layout.
    both = runner.build(compose(*overrides, "init.rules=[{match: '*.weight', fn: fill, index: [0], value: 1.0}]"))
    expected = before.clone()
    expected[0] = 1.0
    assert torch.equal(_weight(both, stored), expected)


@pytest.mark.parametrize("case", CASES)
def test_kaiming_on_the_target_draws_with_the_targets_fan_in(compose, case):
    overrides, stored, target, dims = CASES[case]
    owner = target.rpartition(".")[0]
    cfg = compose(*overrides, f"init.rules=[{{match: '{owner}.*', kind: weight, fn: kaiming_uniform_, mode: fan_in}}]")
    prepared = prepare(validate(cfg))
    target_shape = prepared.model.get_submodule(owner).weight.shape
    # The run's one generator, seeded with `seed`; the stored tensor is the only one a rule sets.
    drawn = torch.nn.init.kaiming_uniform_(torch.empty(target_shape), mode="fan_in", generator=torch.Generator().manual_seed(cfg.seed))
    weight = _weight(prepared.model, stored)
    assert torch.equal(weight, drawn.transpose(*dims))
    fan_in = target_shape[1] * target_shape[2:].numel()
    stored_fan_in = weight.shape[1] * weight.shape[2:].numel()
    assert fan_in != stored_fan_in
    bound = math.sqrt(6 / fan_in)  # gain sqrt(2) (leaky_relu, a=0) * sqrt(3 / fan_in)
    assert weight.abs().max().item() <= bound
    assert weight.abs().max().item() >= 0.95 * bound
    assert prepared.provenance[stored].predicted_std == pytest.approx(math.sqrt(2 / fan_in))


def test_the_targets_exact_name_selects_the_tensor(compose):
    model = runner.build(compose(*AUTOENCODER, "init.rules=[{match: dec.weight, fn: constant_, val: 0.5}]"))
    assert torch.equal(model.enc.weight, torch.full((32, 64), 0.5))
    assert not torch.equal(model.dec.bias, torch.full((64,), 0.5))


@pytest.mark.parametrize("case, index, text", [
    ("2-D", "[0, 40]", "index [0, 40]: 40 is out of range for dim 1 of size 32 ('dec.weight' is (64, 32))"),
    ("4-D", "[4]", "index [4]: 4 is out of range for dim 0 of size 3 ('conv2.weight' is (3, 5, 3, 3))"),
])
def test_an_index_outside_the_targets_shape_is_a_config_error(compose, case, index, text):
    overrides, _, target, _ = CASES[case]  # the index is inside the stored tensor's shape
    with pytest.raises(ConfigError) as caught:
        validate(compose(*overrides, f"init.rules=[{{match: {target}, fn: fill, index: {index}, value: 1.0}}]"))
    found = {p.key: p.message for p in caught.value.problems}
    assert text in found.get("init.rules[0].index", ""), found


def test_a_rule_on_the_target_overridden_through_the_stored_name_is_reported(compose):
    rules = "init.rules=[{match: dec.weight, fn: kaiming_uniform_}, {match: enc.weight, fn: kaiming_uniform_}]"
    with pytest.raises(ConfigError) as caught:
        validate(compose(*AUTOENCODER, rules))
    found = {p.key: p.message for p in caught.value.problems}
    assert "selects 'dec.weight', but later rules set all of them (init.rules[1])" in found.get("init.rules[0]", ""), found


def test_gain_auto_and_lsuv_on_the_target_use_the_targets_layer(compose):
    # dec is the last layer (gain 1); enc is followed by Tanh (gain 5/3).
    cfg = compose(*AUTOENCODER, "init.rules=[{match: dec.weight, fn: xavier_uniform_, gain: auto}]")
    drawn = torch.nn.init.xavier_uniform_(torch.empty(64, 32), gain=1.0, generator=torch.Generator().manual_seed(cfg.seed))
    assert torch.equal(runner.build(cfg).enc.weight, drawn.t())
    prepared = prepare(validate(compose(*AUTOENCODER, "init.rules=[{match: dec.weight, fn: lsuv}]")))
    model, batch = prepared.model, prepared.data.train_x[:256]
    with torch.no_grad():
        hidden = torch.tanh(batch @ model.enc.weight.t() + model.enc.bias)
        out = hidden @ model.enc.weight + model.dec.bias  # dec's output, its weight being enc.weight.T
    assert 0.9 <= out.var().item() <= 1.1
