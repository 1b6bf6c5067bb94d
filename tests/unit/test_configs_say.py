"""Issue 21's silent divergences and language gaps: each config means exactly what it says.

In-place layers, typed layer arguments, numbered layer names and per-copy repeat overrides
(torchvision's ResNet-18 loads as it is), model variables and arithmetic, model files that set
other groups, a zero default lr, and Hydra's override errors as config errors.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import runner
from runner.errors import ConfigError
from runner.prepare.plan import validate


def problems_of(compose, *overrides: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        validate(compose(*overrides))
    return {p.key: p.message for p in caught.value.problems}


# ---------------------------------------------------------------- 1. in-place layers

RESNET18 = ("model=resnet18", "model.vars.channels=3", "model.vars.size=32", "data=synthetic", "data.num_features=3072", "data.num_outputs=10")

ADD_OF_RELU = "+model.layers={{fc: {{type: Linear, in_features: 64, out_features: 10}}, act: {{type: ReLU, inplace: {}}}, add: {{type: Add, inputs: [fc, act]}}}}"


def test_an_in_place_layer_whose_input_another_layer_reads_is_refused_naming_both(compose):
    found = problems_of(compose, "model=custom", ADD_OF_RELU.format("true"))
    assert list(found) == ["model.layers.act.inplace"]
    assert "'act' overwrites 'fc'" in found["model.layers.act.inplace"] and "'add'" in found["model.layers.act.inplace"]


def test_without_inplace_the_graph_computes_relu_plus_its_input(compose):
    model = runner.build(compose("model=custom", ADD_OF_RELU.format("false")))
    x = torch.randn(5, 64)
    with torch.no_grad():
        fc = F.linear(x, model.fc.weight, model.fc.bias)
        assert torch.equal(model(x), fc + F.relu(fc))


@pytest.mark.parametrize("layers, where", [
    # A residual block whose first layer overwrites the block's input: x + f(x) would read f(x) twice.
    ("{fc: {type: Linear, in_features: 64, out_features: 10}, blk: {type: Residual, layers: {act: {type: ReLU, inplace: true}, lin: {type: Linear, in_features: 10, out_features: 10}}}}",
     "model.layers.blk.layers.act.inplace"),
    # Through a view: Dropout is the identity in eval mode, so the ReLU would overwrite fc.
    ("{fc: {type: Linear, in_features: 64, out_features: 10}, drop: {type: Dropout, p: 0.1}, act: {type: ReLU, inplace: true}, add: {type: Add, inputs: [fc, act]}}",
     "model.layers.act.inplace"),
    # A container that passes its input to an in-place layer overwrites what its reader gave it.
    ("{fc: {type: Linear, in_features: 64, out_features: 10}, blk: {type: Sequential, layers: {act: {type: ReLU, inplace: true}}}, add: {type: Add, inputs: [fc, blk]}}",
     "model.layers.blk"),
    # A `shared` reuse of an in-place module (torchvision's one `self.relu`, called twice).
    ("{fc1: {type: Linear, in_features: 64, out_features: 10}, relu: {type: ReLU, inplace: true}, fc2: {type: Linear, in_features: 10, out_features: 10},"
     " relu2: {shared: relu, inputs: [fc2]}, add: {type: Add, inputs: [fc2, relu2]}}", "model.layers.relu2"),
    # In place only in copy 0 of a repeated layer: copy 0 reads fc.
    ("{fc: {type: Linear, in_features: 64, out_features: 10}, act: {type: ReLU, repeat: 2, override: {0: {inplace: true}}}, add: {type: Add, inputs: [fc, act]}}",
     "model.layers.act"),
    # Views that are repeated, a container that only passes its input on, an Add of one input.
    ("{fc: {type: Linear, in_features: 64, out_features: 10}, drop: {type: Dropout, p: 0.1, repeat: 2}, act: {type: ReLU, inplace: true}, add: {type: Add, inputs: [fc, act]}}",
     "model.layers.act.inplace"),
    ("{fc: {type: Linear, in_features: 64, out_features: 10}, blk: {type: Sequential, layers: {d: {type: Dropout, p: 0.1}}}, act: {type: ReLU, inplace: true}, add: {type: Add, inputs: [fc, act]}}",
     "model.layers.act.inplace"),
    ("{fc: {type: Linear, in_features: 64, out_features: 10}, one: {type: Add, inputs: [fc]}, act: {type: ReLU, inplace: true}, add: {type: Add, inputs: [fc, act]}}",
     "model.layers.act.inplace"),
    # Copy 1 overwrites what copy 0 (an Identity) passed on.
    ("{fc: {type: Linear, in_features: 64, out_features: 10}, act: {type: Identity, repeat: 2, override: {1: {type: ReLU, inplace: true}}}, add: {type: Add, inputs: [fc, act]}}",
     "model.layers.act"),
    # Sigmoid's backward reads its own output: overwriting it would stop the first backward.
    ("{fc: {type: Linear, in_features: 64, out_features: 10}, s: {type: Sigmoid}, r: {type: ReLU, inplace: true}}", "model.layers.r.inplace"),
    # The model's own input: the batch is a slice of the dataset, which every evaluation would change.
    ("{act: {type: LeakyReLU, negative_slope: 0.1, inplace: true}, fc: {type: Linear, in_features: 64, out_features: 10}}", "model.layers.act.inplace"),
])
def test_in_place_overwrites_through_residuals_views_and_containers_are_refused(compose, layers, where):
    assert where in problems_of(compose, "model=custom", f"+model.layers={layers}")


def test_torchvision_style_in_place_relus_are_accepted_and_exact(compose):
    # conv-bn-relu(inplace) chains and relu(inplace) after the residual add read values no one else reads.
    cfg = compose(*RESNET18)
    model = runner.build(cfg).eval()
    plain = resnet18(10).eval()
    plain.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x.flatten(1)), plain(x), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- 2. typed layer arguments


@pytest.mark.parametrize("overrides, key, expected", [
    (["+model.layers.fc1.bias=no"], "model.layers.fc1.bias", "expected true or false (Linear's `bias`), got 'no'"),
    (["+model.layers.fc1.bias='false'"], "model.layers.fc1.bias", "expected true or false"),
    (["model=vit", "model.layers.encoder.norm_first=no"], "model.layers.encoder.norm_first", "expected true or false"),
    (["model.layers.fc2.in_features=128.0"], "model.layers.fc2.in_features", "expected an integer (Linear's `in_features`), got 128.0"),
    (["model=cnn", "+model.layers.conv1.padding_mode=zero"], "model.layers.conv1.padding_mode", "'zeros'"),
])
def test_a_layer_argument_of_the_wrong_type_is_an_error_naming_its_key(compose, overrides, key, expected):
    found = problems_of(compose, *overrides)
    assert expected in found[key], found


def test_a_boolean_argument_given_as_a_boolean_means_it(compose):
    model = runner.build(compose("+model.layers.fc1.bias=false"))
    assert model.fc1.bias is None and model.fc2.bias is not None


# ---------------------------------------------------------------- 7. numbered layer names, per-copy overrides


class BasicBlock(nn.Module):
    """torchvision's BasicBlock, written out from He et al. (2016), with torchvision's attribute names."""

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = None
        if stride != 1 or cin != width:
            self.downsample = nn.Sequential(nn.Conv2d(cin, width, 1, stride, bias=False), nn.BatchNorm2d(width))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def resnet18(classes: int) -> nn.Module:
    """ResNet-18 as torchvision lays it out (conv1, bn1, relu, maxpool, layer1..4 of two blocks, avgpool, fc)."""
    torch.manual_seed(7)
    model = nn.Module()
    model.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    model.bn1 = nn.BatchNorm2d(64)
    model.relu = nn.ReLU(inplace=True)
    model.maxpool = nn.MaxPool2d(3, 2, 1)
    widths = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]
    for index, (cin, width, stride) in enumerate(widths, 1):
        setattr(model, f"layer{index}", nn.Sequential(BasicBlock(cin, width, stride), BasicBlock(width, width, 1)))
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.fc = nn.Linear(512, classes)

    def forward(x):
        x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
        return model.fc(torch.flatten(model.avgpool(x), 1))

    model.forward = forward
    with torch.no_grad():  # trained-looking BatchNorm statistics, so that eval mode uses them
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1.0, 0.1)
                module.bias.normal_()
                module.num_batches_tracked.fill_(100)
    return model


def test_torchvision_resnet18_state_dict_loads_with_one_rule_and_no_rename(compose, tmp_path):
    plain = resnet18(10).eval()
    save_file(plain.state_dict(), tmp_path / "resnet18.safetensors")
    cfg = compose(*RESNET18,
                  f"init.rules=[{{fn: pretrained, path: {tmp_path / 'resnet18.safetensors'}, kind: any}}]")
    model = runner.build(cfg).eval()
    ours = model.state_dict()
    assert list(ours) == list(plain.state_dict())  # every name, in torchvision's order
    assert sum(p.numel() for p in model.parameters()) == 11_181_642  # ResNet-18 with a 10-class head
    for name, value in plain.state_dict().items():
        assert torch.equal(ours[name], value), name
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x.flatten(1)), plain(x), rtol=0, atol=1e-5)


def test_numbered_layer_names_are_a_plain_sequentials_own(compose, tmp_path):
    layers = "{0: {type: Linear, in_features: 64, out_features: 32}, 1: {type: Tanh}, 2: {type: Linear, in_features: 32, out_features: 10}}"
    model = runner.build(compose("model=custom", f"+model.layers={layers}"))
    plain = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    plain.load_state_dict(model.state_dict())  # same keys: 0.weight, 0.bias, 2.weight, 2.bias
    x = torch.randn(4, 64)
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))


def test_a_numbered_layer_is_read_by_its_name_in_a_graph(compose):
    layers = "{0: {type: Linear, in_features: 64, out_features: 10}, 1: {type: Tanh}, sum: {type: Add, inputs: [0, '1']}}"
    model = runner.build(compose("model=custom", f"+model.layers={layers}"))
    x = torch.randn(4, 64)
    with torch.no_grad():
        y = F.linear(x, model.get_submodule("0").weight, model.get_submodule("0").bias)
        assert torch.equal(model(x), y + torch.tanh(y))


def test_an_unquoted_number_key_overridden_by_name_and_bad_copy_overrides_are_named(compose, tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "numbered.yaml").write_text(
        "name: numbered\nlayers:\n  0: {type: Linear, in_features: 64, out_features: 10}\n"
        "  blk:\n    type: Linear\n    in_features: 10\n    out_features: 10\n    repeat: 2\n"
        "    override: {'2': {out_features: 3}, '0': {inputs: [input]}}\n")
    found = problems_of(compose, f"hydra.searchpath=[file://{tmp_path}]", "model=numbered", "+model.layers.0.bias=false")
    assert "quote the key in the YAML file ('0': ...)" in found["model.layers.0"]
    assert "expected a copy index from 0 to 1, got '2'" in found["model.layers.blk.override.2"]
    assert "`inputs` is the repeated layer's own" in found["model.layers.blk.override.0.inputs"]


def test_a_copy_override_changes_only_its_copy(compose):
    layers = ("{fc: {type: Linear, in_features: 64, out_features: 8}, blk: {type: Linear, in_features: 8, out_features: 8, repeat: 3, "
              "override: {1: {bias: false}}}, head: {type: Linear, in_features: 8, out_features: 10}}")
    model = runner.build(compose("model=custom", f"+model.layers={layers}"))
    assert [model.blk[i].bias is None for i in range(3)] == [False, True, False]


# ---------------------------------------------------------------- 8. model variables and arithmetic


WIDE = """\
name: wide
vars:
  width: 48
  heads: 4
layers:
  fc1: {type: Linear, in_features: "${data.num_features}", out_features: "${floordiv:${mul:${model.vars.width},2},${model.vars.heads}}"}
  act: {type: ReLU}
  fc2: {type: Linear, in_features: "${%s:${mul:${model.vars.width},2},${model.vars.heads}}", out_features: "${data.num_outputs}"}
"""


def _model_file(tmp_path, text: str) -> str:
    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "model" / "wide.yaml").write_text(text)
    return f"hydra.searchpath=[file://{tmp_path}]"


def test_model_variables_and_arithmetic_reach_the_layers(compose, tmp_path):
    search = _model_file(tmp_path, WIDE % "floordiv")
    model = runner.build(compose(search, "model=wide"))
    assert model.fc1.weight.shape == (48 * 2 // 4, 64) and model.fc2.weight.shape == (10, 24)
    model = runner.build(compose(search, "model=wide", "model.vars.width=32"))  # one number changes every use
    assert model.fc1.weight.shape == (16, 64) and model.fc2.weight.shape == (10, 16)
    saved = validate(compose(search, "model=wide")).spec.config["model"]
    assert "vars" not in saved and saved["layers"]["fc1"]["out_features"] == 24  # the run's config holds the numbers


def test_a_float_from_div_where_an_integer_belongs_is_named(compose, tmp_path):
    found = problems_of(compose, _model_file(tmp_path, WIDE % "div"), "model=wide")
    assert found == {"model.layers.fc2.in_features": "expected an integer (Linear's `in_features`), got 24.0"}


def test_a_variable_nothing_reads_and_a_bad_division_are_errors(compose, tmp_path):
    found = problems_of(compose, "+model.vars.unused=3")
    assert "no key of the config reads it" in found["model.vars.unused"]
    with pytest.raises(ConfigError, match="7 does not divide 96"):
        validate(compose(_model_file(tmp_path, WIDE % "floordiv"), "model=wide", "model.vars.heads=7"))


# ---------------------------------------------------------------- 7b. model files hold models


def test_a_model_file_that_sets_the_optimizer_is_refused_naming_the_preset(compose, tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text(
        "# @package _global_\nmodel:\n  name: mine\n  layers:\n    fc: {type: Linear, in_features: 64, out_features: 10}\n"
        "optim: {name: sgd, lr: 0.01, momentum: 0.9}\n")
    with pytest.raises(ConfigError) as caught:
        compose(f"hydra.searchpath=[file://{tmp_path}]", "model=mine")
    (problem,) = caught.value.problems
    assert problem.key == "model" and "sets optim beside the model" in problem.message and "experiment preset" in problem.message


# ---------------------------------------------------------------- 10. a zero default lr, Hydra's errors


def test_a_zero_default_lr_is_allowed_when_every_group_sets_its_own(compose):
    groups = "optim.param_groups=[{match: 'fc1.*', lr: 0.01}, {lr: 0.002}]"
    plan = validate(compose("optim.lr=0", groups))
    model = runner.build(compose("optim.lr=0", groups))
    from runner.prepare.optim import make_optimizer

    optimizer = make_optimizer(model, plan.spec.optim, plan.groups)
    assert [g["lr"] for g in optimizer.param_groups] == [0.01, 0.002]  # the default 0 reaches no tensor
    found = problems_of(compose, "optim.lr=0", "optim.param_groups=[{match: 'fc1.*', lr: 0.01}, {}]")
    assert "optim.param_groups[1] does not" in found["optim.lr"]
    assert "no param_groups" in problems_of(compose, "optim.lr=0")["optim.lr"]


def test_in_place_after_a_shared_module_computes_what_plain_pytorch_does_when_no_one_else_reads(compose):
    layers = ("{fc1: {type: Linear, in_features: 64, out_features: 10}, relu: {type: ReLU, inplace: true}, fc2: {type: Linear, in_features: 10, out_features: 10},"
              " relu2: {shared: relu, inputs: [fc2]}}")
    model = runner.build(compose("model=custom", f"+model.layers={layers}"))
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert torch.equal(model(x), F.relu(model.fc2(F.relu(model.fc1(x)))))


def test_a_numbered_repeat_of_one_takes_a_copy_override(compose):
    model = runner.build(compose("model=resnet18", "model.layers.layer2.repeat=1"))
    assert isinstance(model.layer2[0].downsample, nn.Sequential) and len(model.layer2) == 1  # a ResNet-10 stage


@pytest.mark.parametrize("overrides, key, words", [
    (["model.layers.fc1.bias=false"], "model.layers.fc1.bias", "does not set 'bias'; add it with +model.layers.fc1.bias=..."),
    (["model.layers.fc1.bais=false"], "model.layers.fc1.bais", "did you mean 'bias'?"),
    (["experiment=nanogpt", "model.vars.n_layers=3"], "model.vars.n_layers", "did you mean 'n_layer'?"),
])
def test_a_key_missing_from_a_mapping_gets_the_right_advice(compose, overrides, key, words):
    with pytest.raises(ConfigError) as caught:
        compose(*overrides)
    (problem,) = caught.value.problems
    assert problem.key == key and words in problem.message and "model=custom" not in problem.message


@pytest.mark.parametrize("rule, key", [
    ("{match: fc1.weight, fn: fill, index: [0], value: -inf}", "init.rules[0].value"),
    ("{match: fc1.weight, fn: constant_, val: inf}", "init.rules[0].val"),
])
def test_an_infinite_constant_in_a_trainable_tensor_is_refused(compose, rule, key):
    assert "only a buffer or a frozen tensor may hold ±inf" in problems_of(compose, f"init.rules=[{rule}]")[key]


@pytest.mark.parametrize("layers", [
    # An in-place Dropout at the end: its readers read its own output, which is meant to be new.
    "{fc: {type: Linear, in_features: 64, out_features: 10}, drop: {type: Dropout, p: 0.5, inplace: true}}",
    # Two elements of one tuple are two tensors: overwriting one leaves the other alone.
    "{x: {type: Unflatten, dim: 1, unflattened_size: [8, 8]}, gru: {type: GRU, input_size: 8, hidden_size: 10, batch_first: true},"
    " o: {type: Item, index: 0, inputs: [gru]}, h: {type: Item, index: 1, inputs: [gru]}, last: {type: Select, dim: 1, index: -1, inputs: [o]},"
    " r: {type: ReLU, inplace: true, inputs: [last]}, hs: {type: Select, dim: 0, index: 0, inputs: [h]}, s: {type: Add, inputs: [r, hs]}}",
])
def test_legitimate_in_place_layers_train_as_plain_pytorch_does(compose, layers):
    model = runner.build(compose("model=custom", f"+model.layers={layers}"))
    x = torch.randn(6, 64)
    model.train()
    model(x).sum().backward()  # plain PyTorch runs the same forward and backward
    assert all(p.grad is not None for p in model.parameters())
