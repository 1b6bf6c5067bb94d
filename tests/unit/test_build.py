"""The model spec: declared names, nested blocks with repeat, shared modules, project layers."""

from __future__ import annotations

import torch

import runner
from runner.model.tensors import count_parameters


def test_parameter_names_follow_declared_names(compose):
    model = runner.build(compose("model=nested"))
    names = [n for n, _ in model.named_parameters()]
    assert names[:2] == ["stem.weight", "stem.bias"]
    assert "blocks.0.fc1.weight" in names and "blocks.3.fc2.bias" in names
    assert names[-2:] == ["head.weight", "head.bias"]


def test_repeat_stamps_independent_copies(compose):
    model = runner.build(compose("model=nested"))
    first, last = model.blocks[0].fc1.weight, model.blocks[3].fc1.weight
    assert first is not last and not torch.equal(first, last)
    assert len(model.blocks) == 4


def test_shared_layer_is_one_module_with_one_set_of_tensors(compose):
    model = runner.build(compose("model=tied_mlp"))
    assert model.shared is model.shared_again
    names = [n for n, _ in model.named_parameters()]
    assert "shared.weight" in names and not any(n.startswith("shared_again") for n in names)


def test_notes_shared_mlp_counts_121_unique_parameters_not_193(compose):
    # The source notes: 4 -> 8, one 8 -> 8 layer used twice, 8 -> 1.
    cfg = compose("model=tied_mlp", "data=synthetic", "data.task=regression", "data.num_features=4", "data.num_outputs=1")
    counts = count_parameters(runner.build(cfg))
    assert counts["unique"] == 121
    assert counts["naive"] == 193


def test_residual_adds_its_input(compose):
    cfg = compose(
        "model=mlp",
        "+model.layers.res={type: Residual, layers: {fc: {type: Linear, in_features: 10, out_features: 10}}}",
    )
    model = runner.build(cfg)
    block = model.res
    with torch.no_grad():
        block.fc.weight.zero_()
        block.fc.bias.zero_()
    x = torch.randn(3, 10)
    assert torch.equal(block(x), x)
