"""Every code example of the source notes (../shared/seeds/), declared in our YAML
(examples/notes/experiment/<name>.yaml) and checked against plain PyTorch written from the notes.

Each test builds the example through the real config tree (`--config-dir examples/notes`), writes
the notes' module by hand, and compares what the notes show: tensor names (the state_dict's unique
tensors, buffers), parameter counts, outputs and gradients (with our weights copied into the
hand-written module), init values (against the notes' arithmetic), and training where the notes train.
Examples marked PARTLY in their file are checked for what they do express, and the difference is
asserted, so it cannot go unnoticed if it changes.
"""

from __future__ import annotations

import json
import math
from itertools import chain

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

import runner
from runner.errors import ConfigError
from runner.prepare.optim import make_optimizer
from runner.prepare.plan import validate
from runner.prepare.prepare import prepare
from runner.training.run import run_training
from tests.conftest import QUIET, REPO, run_cli

NOTES = REPO / "examples" / "notes"
EXAMPLES = sorted(p.stem for p in (NOTES / "experiment").glob("*.yaml"))


def config(name: str, *overrides: str):
    return runner.compose([*QUIET, f"hydra.searchpath=[file://{NOTES}]", f"experiment={name}", *overrides])


def ours(name: str, *overrides: str) -> nn.Module:
    return runner.build(config(name, *overrides))


def renamed(name: str, rename) -> str:
    """The name a tensor of the hand-written module has in ours: the first matching prefix replaced."""
    for old, new in rename:
        if name.startswith(old):
            return new + name[len(old):]
    return name


def tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (persistent or not), each tensor once, under its first name."""
    return dict(chain(model.named_parameters(), model.named_buffers()))


def saved(model: nn.Module) -> list[str]:
    """The state_dict's unique tensors: what a checkpoint holds (a shared tensor once)."""
    keys = set(model.state_dict())
    return [name for name in tensors(model) if name in keys]


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_same(model: nn.Module, plain: nn.Module, x: torch.Tensor, rename=(), forward=None, copy=True,
               train=True) -> torch.Tensor:
    """Asserts ours and the hand-written module are the same network; returns our output.

    Same saved tensor names, buffers, trainable flags and parameter count; then (with our values
    copied into the plain module unless `copy` is False) the same output and the same gradient of
    the output's sum for every parameter, and the same buffers after the forward pass (BatchNorm
    statistics)."""
    forward = forward or plain
    assert sorted(renamed(n, rename) for n in saved(plain)) == sorted(saved(model))
    ours_tensors = tensors(model)
    for name, tensor in tensors(plain).items():
        assert renamed(name, rename) in ours_tensors, f"{name} ({renamed(name, rename)}) missing from ours"
    assert count(model) == count(plain)
    plain_params = {renamed(n, rename): p for n, p in plain.named_parameters()}
    assert {n: p.requires_grad for n, p in model.named_parameters()} == {n: p.requires_grad for n, p in plain_params.items()}
    if copy:
        with torch.no_grad():
            for name, tensor in tensors(plain).items():
                tensor.copy_(ours_tensors[renamed(name, rename)])
    model.train(train)
    plain.train(train)
    out = model(x)
    torch.testing.assert_close(out, forward(x))
    for name, tensor in tensors(plain).items():
        torch.testing.assert_close(ours_tensors[renamed(name, rename)], tensor, msg=f"buffer {name} after forward")
    out.sum().backward()
    forward(x).sum().backward()
    ours_params = dict(model.named_parameters())
    for name, p in plain_params.items():
        if p.grad is None:
            assert ours_params[name].grad is None, name
        else:
            torch.testing.assert_close(ours_params[name].grad, p.grad, msg=f"gradient of {name}")
    return out


def without_rules(name: str, *rules: str) -> nn.Module:
    """The example built with only the given init rules (none: PyTorch's own init), same seed."""
    return ours(name, f"init.rules=[{', '.join(rules)}]")


def test_every_example_has_a_test_here():
    assert len(EXAMPLES) >= 30
    missing = [name for name in EXAMPLES if f"test_{name}" not in globals()]
    assert not missing, f"examples without a test: {missing}"


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_example_trains(name, tmp_path):
    summary = runner.train(config(name, "trainer.max_steps=2"), tmp_path / name)
    assert summary["steps"] == 2 and math.isfinite(summary["train_loss"])


def test_an_example_runs_from_the_cli(tmp_path):
    result = run_cli("--config-dir", str(NOTES), "experiment=convnet_shared_weight", "trainer.max_steps=2",
                     *QUIET, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 2


# ------------------------------------------------------------------ 000: parameters and buffers


def test_frozen_parameter(tmp_path):
    class Splatting(nn.Module):  # gaussian-splatting's _xyz, the right way
        def __init__(self):
            super().__init__()
            self.xyz = nn.Parameter(torch.randn(3), requires_grad=False)
            self.head = nn.Linear(3, 1)

        def forward(self, x):
            return self.head(x + self.xyz)

    model = ours("frozen_parameter")
    check_same(model, Splatting(), torch.randn(5, 3))
    assert model.xyz.grad is None and "xyz" in model.state_dict()
    # The notes' wrong line: nn.Parameter makes a tensor trainable again.
    assert nn.Parameter(torch.zeros(3).requires_grad_(False)).requires_grad
    initial = ours("frozen_parameter")
    runner.train(config("frozen_parameter", "trainer.max_steps=3"), tmp_path / "run")
    trained = runner.load(tmp_path / "run")
    assert torch.equal(trained.xyz, initial.xyz)  # never optimized
    assert not torch.equal(trained.head.weight, initial.head.weight)


def test_param_groups_xyz():
    cfg = config("param_groups_xyz")
    prepared = prepare(validate(cfg))
    optimizer = make_optimizer(prepared.model, prepared.spec.optim, prepared.plan.groups)
    (group,) = optimizer.param_groups
    assert group["group"] == "xyz" and group["lr"] == pytest.approx(0.00016 * 5.0) and group["eps"] == 1e-15
    assert group["params"] == [prepared.model.xyz]
    # One Adam step against the notes' optimizer on a copy of the tensor, with the same gradient.
    xyz = nn.Parameter(prepared.model.xyz.detach().clone())
    notes = torch.optim.Adam([{"params": [xyz], "lr": 0.00016 * 5.0, "name": "xyz"}], lr=0.0, eps=1e-15)
    gradient = torch.randn(3)
    prepared.model.xyz.grad, xyz.grad = gradient.clone(), gradient.clone()
    optimizer.step()
    notes.step()
    assert torch.equal(prepared.model.xyz.detach(), xyz.detach())


def test_register_buffer():
    class Model(nn.Module):  # the notes' Model, plus the Linear the runner needs to have something to train
        def __init__(self):
            super().__init__()
            self.register_buffer("running_mean", torch.zeros(1))
            self.fc = nn.Linear(4, 1)

        def forward(self, x):
            return self.fc(x)

    model = ours("register_buffer")
    assert torch.equal(model.running_mean, torch.zeros(1))  # torch.zeros(1): no rule sets it
    check_same(model, Model(), torch.randn(5, 4))
    assert "running_mean" not in dict(model.named_parameters())
    assert dict(model.named_buffers()).keys() == {"running_mean"}
    assert "running_mean" in model.state_dict()


def test_buffer_persistence(tmp_path):
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("kept", torch.zeros(1))
            self.register_buffer("scratch", torch.zeros(1), persistent=False)
            self.fc = nn.Linear(4, 1)

        def forward(self, x):
            return self.fc(x)

    model = ours("buffer_persistence")
    check_same(model, Model(), torch.randn(5, 4))
    assert dict(model.named_buffers()).keys() == {"kept", "scratch"}
    runner.train(config("buffer_persistence", "trainer.max_steps=2"), tmp_path)
    (weights,) = tmp_path.glob("checkpoints/*/model.safetensors")
    with safe_open(str(weights), "pt") as file:  # safetensors' own reader
        assert "kept" in file.keys() and "scratch" not in file.keys()


def test_mymodel_layers():
    class MyModel(nn.Module):
        def __init__(self, text_dim=768, flame_dim=156):
            super().__init__()
            self.layers = nn.Sequential(nn.Linear(flame_dim, 2048), nn.ReLU(), nn.Conv2d(1, 1, 3, 1))
            self.conv2 = nn.Conv2d(1, 1, 3, 1)  # registered, never called

        def forward(self, x):
            return self.layers(x)

    model, plain = ours("mymodel_layers"), MyModel()
    rename = [("layers.0.", "layers.fc."), ("layers.2.", "layers.conv.")]
    x = torch.randn(2, 3 * 156)
    check_same(model, plain, x, rename, forward=lambda x: plain(x.view(-1, 1, 3, 156)).flatten(1))
    assert model.layers.fc.weight is next(iter(model.parameters()))  # model.layers[0].weight is list(parameters())[0]
    assert list(model.layers.state_dict()) == [renamed(f"layers.{k}", rename)[7:] for k in plain.layers.state_dict()]
    assert model.conv2.weight.grad is None and "conv2.weight" in model.state_dict()


def test_init_library():
    model = ours("init_library")
    assert torch.equal(model.fc1.weight, torch.ones(8, 4))                   # constant_(w, 1)
    for layer in (model.fc1, model.fc2, model.fc3, model.fc4):
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))         # zeros_(b)
    assert 0.005 < model.fc2.weight.std() < 0.015 and model.fc2.weight.abs().max() < 0.05  # normal_(0, 0.01)
    w3 = model.fc3.weight
    assert w3.abs().max() <= 10 and w3.abs().max() > 5                      # uniform_(-10, 10)
    assert model.fc4.weight.abs().max() <= math.sqrt(6 / (8 + 1))            # xavier_uniform_


def test_init_apply_xavier():
    model, default = ours("init_apply_xavier"), without_rules("init_apply_xavier")
    for name in ("conv.weight", "conv.bias", "fc.bias", "head.bias"):  # not nn.Linear weights: untouched
        assert torch.equal(tensors(model)[name], tensors(default)[name]), name
    for layer, (fan_out, fan_in) in ((model.fc, (8, 8)), (model.head, (1, 8))):
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert layer.weight.abs().max() <= bound
    # Linear's own init is bounded by 1/sqrt(fan_in); xavier's bound is wider, and 64 draws reach past it.
    assert model.fc.weight.abs().max() > 1 / math.sqrt(8) and not torch.equal(model.fc.weight, default.fc.weight)


def test_piecewise_init():
    model = ours("piecewise_init")
    drawn = without_rules("piecewise_init", '{match: "*.weight", type: Linear, fn: uniform_, a: -10.0, b: 10.0}')
    for name in ("fc1.weight", "fc2.weight"):
        w = tensors(drawn)[name]
        assert torch.equal(tensors(model)[name], w * (w.abs() >= 5))  # m.weight.data *= m.weight.data.abs() >= 5
    w = model.fc1.weight
    assert ((w == 0) | ((w.abs() >= 5) & (w.abs() <= 10))).all() and (w == 0).any() and (w != 0).any()


def test_direct_edit_conv():
    model, default = ours("direct_edit_conv"), without_rules("direct_edit_conv")
    assert torch.equal(model.conv2.weight, torch.full((1, 1, 3, 3), 42.0))  # += 1, then [:] = 42
    assert torch.equal(model.conv2.bias, default.conv2.bias)
    x = torch.randn(3, 16)
    want = F.conv2d(x.view(-1, 1, 4, 4), torch.full((1, 1, 3, 3), 42.0), default.conv2.bias).flatten(1)
    torch.testing.assert_close(model(x), want)


def test_shared_layer():
    shared = nn.Linear(8, 8)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), shared, nn.ReLU(), shared, nn.ReLU(), nn.Linear(8, 1))
    model = ours("shared_layer")
    assert model.shared.weight[0, 0] == 100 and model.shared_again.weight is model.shared.weight
    assert count(model) == 121 and sum(v.numel() for v in model.state_dict().values()) == 193
    assert sum(v.numel() for v in net.state_dict().values()) == 193
    check_same(model, net, torch.randn(5, 4), rename=[("0.", "fc1."), ("2.", "shared."), ("6.", "head.")])
    assert net[4].weight[0, 0] == 100  # the notes' point: net[4] is net[2]
    # net[2].weight.grad is the sum of both uses: the gradient of each use, computed apart, added.
    x = torch.randn(5, 4)
    h = torch.relu(net[0](x))
    w1, w2 = shared.weight.detach().clone().requires_grad_(), shared.weight.detach().clone().requires_grad_()
    y = net[6](torch.relu(F.linear(torch.relu(F.linear(h, w1, shared.bias)), w2, shared.bias)))
    y.sum().backward()
    model.zero_grad()
    model(x).sum().backward()
    torch.testing.assert_close(model.shared.weight.grad, w1.grad + w2.grad)


# ------------------------------------------------------------------ 001: d2l parameter management


def test_access_params():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    model = ours("access_params")
    check_same(model, net, torch.randn(5, 4), rename=[("0.", "fc1."), ("2.", "fc2.")])
    assert list(model.fc2.state_dict()) == list(net[2].state_dict()) == ["weight", "bias"]
    assert [n for n, _ in model.named_parameters()] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert torch.equal(model.state_dict()["fc2.bias"], net.state_dict()["2.bias"])
    assert count(model) == 4 * 8 + 8 + 8 + 1


def test_nested_blocks():
    def block1():
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4), nn.ReLU())

    def block2():
        net = nn.Sequential()
        for i in range(4):
            net.add_module(f"block {i}", block1())
        return net

    rgnet = nn.Sequential(block2(), nn.Linear(4, 1))
    model = ours("nested_blocks")
    rename = [(f"0.block {i}.{j}.", f"blocks.{i}.{layer}.") for i in range(4) for j, layer in ((0, "fc1"), (2, "fc2"))]
    check_same(model, rgnet, torch.randn(5, 4), rename=[*rename, ("1.", "head.")])
    assert torch.equal(rgnet[0][1][0].bias, model.blocks[1].fc1.bias)
    assert len({id(model.blocks[i].fc1.weight) for i in range(4)}) == 4  # four independent copies
    assert count(model) == 4 * (4 * 8 + 8 + 8 * 4 + 4) + 5


def test_init_normal():
    def init_normal(m):
        if type(m) == nn.Linear:  # noqa: E721 - the notes' exact-type test
            nn.init.normal_(m.weight, mean=0, std=0.01)
            nn.init.zeros_(m.bias)

    model = ours("init_normal")
    for layer in (model.fc1, model.fc2):
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
        assert layer.weight.abs().max() < 0.05
    assert 0.005 < model.fc1.weight.std() < 0.015
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    net.apply(init_normal)
    assert (net[0].weight.std() - model.fc1.weight.std()).abs() < 0.006  # the same law


def test_init_constant():
    def init_constant(m):
        if type(m) == nn.Linear:  # noqa: E721
            nn.init.constant_(m.weight, 1)
            nn.init.zeros_(m.bias)

    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    net.apply(init_constant)
    model = ours("init_constant")
    check_same(model, net, torch.randn(5, 4), rename=[("0.", "fc1."), ("2.", "fc2.")], copy=False)  # values from the notes' own init


def test_init_xavier_42():
    model, default = ours("init_xavier_42"), without_rules("init_xavier_42")
    assert torch.equal(model.fc2.weight, torch.full((1, 8), 42.0))   # net[2].apply(init_42)
    assert model.fc1.weight.abs().max() <= math.sqrt(6 / (4 + 8))    # net[0].apply(init_xavier)
    assert model.fc1.weight.abs().max() > 1 / math.sqrt(4)          # past Linear's own bound
    assert torch.equal(model.fc1.bias, default.fc1.bias) and torch.equal(model.fc2.bias, default.fc2.bias)


def test_direct_edit():
    model = ours("direct_edit")
    drawn = without_rules("direct_edit", '{match: "*.weight", type: Linear, fn: uniform_, a: -10.0, b: 10.0}')
    w = drawn.fc1.weight.detach().clone()
    w *= w.abs() >= 5        # my_init
    w[:] += 1                # net[0].weight.data[:] += 1
    w[0, 0] = 42             # net[0].weight.data[0, 0] = 42
    assert torch.equal(model.fc1.weight, w)
    assert torch.equal(model.fc2.weight, drawn.fc2.weight * (drawn.fc2.weight.abs() >= 5))


def test_shared_mlp_training(tmp_path):
    cfg = config("shared_mlp_training")
    prepared = prepare(validate(cfg))
    shared_fc = nn.Linear(4, 4)
    mlp = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), shared_fc, nn.ReLU(), shared_fc, nn.ReLU(), nn.Linear(4, 3))
    rename = [("0.", "fc1."), ("2.", "shared."), ("6.", "head.")]
    initial = tensors(prepared.model)
    with torch.no_grad():
        for name, p in mlp.named_parameters():
            p.copy_(initial[renamed(name, rename)])
    # The notes' loop: SGD(lr=0.01), mse_loss, 2 epochs; batches in the runner's documented order.
    optimizer = torch.optim.SGD(mlp.parameters(), lr=0.01)
    x, y = prepared.data.train_x, prepared.data.train_y
    shared_grad_norms = []
    for epoch in range(2):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        for start in range(0, len(x), cfg.trainer.batch_size):
            batch = order[start:start + cfg.trainer.batch_size]
            loss = F.mse_loss(mlp(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            assert mlp[2].weight.grad is mlp[4].weight.grad  # one tensor, one gradient
            shared_grad_norms.append(mlp[2].weight.grad.norm().item())
            optimizer.step()
    run_training(prepared, tmp_path)
    for name, p in mlp.named_parameters():
        torch.testing.assert_close(tensors(prepared.model)[renamed(name, rename)], p, msg=name)
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "grad_norm/shared.weight" in r]
    assert len(steps) == len(shared_grad_norms) and not any("grad_norm/shared_again.weight" in r for r in logged)
    assert [r["grad_norm/shared.weight"] for r in steps] == pytest.approx(shared_grad_norms, rel=1e-5)


# ------------------------------------------------------------------ 002: _parameters, _modules, sharing


def test_custom_linear_w_b():
    class Linear(nn.Module):  # the notes' class; b is (72,), not (72, 1): see the YAML
        def __init__(self, input_features, output_features):
            super().__init__()
            self.w = nn.Parameter(torch.rand(size=(input_features, output_features)))
            self.b = nn.Parameter(torch.rand(size=(output_features,)))
            self.layer_inner = nn.Conv2d(32, 32, 3, 2, 1)

        def forward(self, input):
            return torch.sigmoid(input @ self.w + self.b)

    model, l1 = ours("custom_linear_w_b"), Linear(28 * 28, 72)
    for t in (model.w, model.b):
        assert 0 <= t.min() and t.max() < 1 and t.std() > 0.2  # torch.rand: U[0, 1)
    check_same(model, l1, torch.randn(4, 784) / 28)
    assert list(model._parameters) == list(l1._parameters) == ["w", "b"]
    assert "layer_inner" in model._modules and model.layer_inner.weight.grad is None


def test_lenet():
    class LeNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2, 2))
            self.classifiter = nn.Sequential(
                nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))

        def forward(self, x):
            x = self.features(x)
            x = x.view(-1, 16 * 5 * 5)
            return self.classifiter(x)

    ln, model = LeNet(), ours("lenet")
    rename = [("features.0.", "features.conv1."), ("features.3.", "features.conv2."),
              ("classifiter.0.", "classifiter.fc1."), ("classifiter.2.", "classifiter.fc2."), ("classifiter.4.", "classifiter.fc3.")]
    x = torch.rand(1, 3 * 32 * 32)  # torch.rand((1, 3, 32, 32))
    check_same(model, ln, x, rename, forward=lambda x: ln(x.view(-1, 3, 32, 32)))
    assert model.features.conv1.weight.grad is not None and model.features.conv1.weight.data.grad is None
    assert count(model) == (3 * 6 * 25 + 6) + (6 * 16 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)


def test_double_conv():
    class doubleConv(nn.Module):  # noqa: N801 - the notes' name
        def __init__(self, in_channel, out_channel):
            super().__init__()
            self.doubleconv = nn.Sequential(
                nn.Conv2d(in_channel, out_channel, kernel_size=3, padding=1), nn.BatchNorm2d(out_channel), nn.ReLU(inplace=True),
                nn.Conv2d(out_channel, out_channel, kernel_size=3, padding=1), nn.BatchNorm2d(out_channel), nn.ReLU(inplace=True))

        def forward(self, x):
            return self.doubleconv(x)

    dc, model = doubleConv(8, 16), ours("double_conv")
    rename = [(f"doubleconv.{i}.", f"doubleconv.{name}.") for i, name in enumerate(("conv1", "bn1", "", "conv2", "bn2"))]
    check_same(model, dc, torch.randn(4, 128), rename, forward=lambda x: dc(x.view(-1, 8, 4, 4)).flatten(1))  # BN stats too
    assert not dc._parameters and not model.doubleconv._parameters
    assert list(model.doubleconv._modules) == ["conv1", "bn1", "relu1", "conv2", "bn2", "relu2"]
    assert isinstance(model.doubleconv.conv1, nn.Conv2d)  # dc.doubleconv[0]


def test_init_conv_weight():
    model, default = ours("init_conv_weight"), without_rules("init_conv_weight")
    w = model.layer_inner.weight
    assert abs(w.mean().item() + 1) < 0.03 and abs(w.std().item() - 0.5) < 0.02  # normal_(mean=-1, std=0.5), 9216 draws
    assert torch.equal(model.layer_inner.bias, default.layer_inner.bias)
    # The other two ways are one rule each; each is the law it names.
    uniform = without_rules("init_conv_weight", "{match: layer_inner.weight, fn: uniform_, a: -10, b: 10}").layer_inner.weight
    assert uniform.abs().max() <= 10 and abs(uniform.std().item() - 20 / math.sqrt(12)) < 0.2
    normal = without_rules("init_conv_weight", "{match: layer_inner.weight, fn: normal_, mean: 0, std: 1}").layer_inner.weight
    assert abs(normal.mean().item()) < 0.05 and abs(normal.std().item() - 1) < 0.04


def test_convnet_shared_weight():
    class ConvNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_weight = nn.Parameter(torch.randn(3, 3, 5, 5))

        def forward(self, x):
            x = F.conv2d(x, self.conv_weight, bias=None, stride=1, padding=2)
            x = F.conv2d(x, self.conv_weight.transpose(2, 3).contiguous(), bias=None, stride=1, padding=0)
            return x

    net, model = ConvNet(), ours("convnet_shared_weight")
    assert [n for n, _ in model.named_parameters()] == ["conv1.weight"] and count(model) == 3 * 3 * 5 * 5
    assert model.conv2.parametrizations.weight.original is model.conv1.weight
    assert torch.equal(model.conv2.weight, model.conv1.weight.transpose(2, 3))
    check_same(model, net, torch.randn(4, 192), rename=[("conv_weight", "conv1.weight")],
               forward=lambda x: net(x.view(-1, 3, 8, 8)).flatten(1))  # the gradient: both uses added


def test_linear_reused_4x():
    linear = nn.Linear(1, 1, bias=False)
    net = nn.Sequential(linear, linear, linear, linear)
    for _, param in net.named_parameters():
        nn.init.constant_(param, val=3)
    model = ours("linear_reused_4x")
    y = model(torch.ones(1, 1)).sum()
    assert y.item() == 3 ** 4 == 81
    y.backward()
    assert model.l1.weight.grad.item() == 4 * 3 ** 3 == 108
    assert [n for n, _ in model.named_parameters()] == ["l1.weight"]
    model.zero_grad()
    check_same(model, net, torch.ones(1, 1), rename=[("0.", "l1.")], copy=False)


# ------------------------------------------------------------------ 003: Parameter vs buffer


def test_param_and_buffer():
    class MyModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("my_buffer", torch.randn(2, 3))
            self.param = nn.Parameter(torch.randn(3, 3))

        def forward(self, x):  # the notes' forward calls the tensors; here x @ param
            return x @ self.param

    model = ours("param_and_buffer")
    assert model.my_buffer.std() > 0  # torch.randn: the rule reached the buffer
    check_same(model, MyModel(), torch.randn(5, 3))
    assert [n for n, _ in model.named_parameters()] == ["param"]
    assert [n for n, _ in model.named_buffers()] == ["my_buffer"]
    assert sorted(model.state_dict()) == ["my_buffer", "param"]


def test_embeddings_pe():
    def build_position_encoding(max_len, d_model):  # the standard table, computed here in float64
        position = torch.arange(max_len, dtype=torch.float64).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64) * -(math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model, dtype=torch.float64)
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        return pe.unsqueeze(0).float()

    class Embeddings(nn.Module):
        def __init__(self, vocab_size, d_model, dropout=0.1, max_len=5000):
            super().__init__()
            self.embs = nn.Embedding(vocab_size, d_model)
            self.d_model = d_model
            self.dropout = nn.Dropout(dropout)
            self.register_buffer("pe", build_position_encoding(max_len, d_model))
            self.head = nn.Linear(d_model, vocab_size)  # the next-character readout of the YAML

        def forward(self, x):
            h = self.dropout(self.embs(x) + self.pe[:, : x.size(1)])
            return self.head(h.reshape(-1, self.d_model))

    model, plain = ours("embeddings_pe"), Embeddings(28, 16)
    torch.testing.assert_close(model.pe, plain.pe, rtol=0, atol=1e-6)
    assert "pe" in model.state_dict() and "pe" not in dict(model.named_parameters())
    check_same(model, plain, torch.randint(0, 28, (3, 32)), copy=True, train=False)


# ------------------------------------------------------------------ 004: the cheatsheet


def test_sequential_mlp():
    class MySequential(nn.Module):
        def __init__(self, *args):
            super().__init__()
            for idx, module in enumerate(args):
                self._modules[str(idx)] = module

        def forward(self, X):
            for block in self._modules.values():
                X = block(X)
            return X

    for net in (nn.Sequential(nn.Linear(20, 256), nn.ReLU(), nn.Linear(256, 10)),
                MySequential(nn.Linear(20, 256), nn.ReLU(), nn.Linear(256, 10))):
        check_same(ours("sequential_mlp"), net, torch.rand(2, 20), rename=[("0.", "fc1."), ("2.", "fc2.")])


def test_custom_mlp(tmp_path):
    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden = nn.Linear(20, 256)
            self.out = nn.Linear(256, 10)

        def forward(self, X):
            return self.out(F.relu(self.hidden(X)))

    check_same(ours("custom_mlp"), MLP(), torch.rand(2, 20))
    runner.train(config("custom_mlp", "trainer.max_steps=3"), tmp_path)
    (weights,) = tmp_path.glob("checkpoints/*/model.safetensors")
    clone = MLP()
    clone.load_state_dict(load_file(str(weights)))  # strict: exactly the notes' keys
    clone.eval()
    loaded, x = runner.load(tmp_path), torch.rand(5, 20)
    assert torch.equal(loaded(x), clone(x))


def test_my_linear():
    class MyLinear(nn.Module):
        def __init__(self, in_units, units):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(in_units, units))
            self.bias = nn.Parameter(torch.randn(units,))

        def forward(self, X):
            linear = torch.matmul(X, self.weight.data) + self.bias.data
            return F.relu(linear)

    model, linear = ours("my_linear"), MyLinear(5, 3)
    assert model.weight.std() > 0.3 and model.bias.abs().max() > 0  # torch.randn, through normal_
    x = torch.rand(2, 5)
    with torch.no_grad():
        linear.weight.copy_(model.weight)
        linear.bias.copy_(model.bias)
    torch.testing.assert_close(model(x), linear(x))
    assert count(model) == count(linear) == 18 and saved(model) == saved(linear)
    # PARTLY: the notes read .data, so their tensors get no gradient; ours read the parameters.
    assert not linear(x).requires_grad  # nothing to backpropagate through in the notes' module
    model(x).sum().backward()
    assert model.weight.grad is not None and model.bias.grad is not None


def test_fixed_hidden_mlp():
    class FixedHiddenMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.rand_weight = torch.rand((20, 20), requires_grad=False)
            self.linear = nn.Linear(20, 20)

        def forward(self, X, halve=True):
            X = self.linear(X)
            X = F.relu(torch.mm(X, self.rand_weight) + 1)
            X = self.linear(X)
            while halve and X.abs().sum() > 1:
                X /= 2
            return X.sum() if halve else X

    model, net = ours("fixed_hidden_mlp"), FixedHiddenMLP()
    assert 0 <= model.rand_weight.min() and model.rand_weight.max() < 1 and torch.equal(model.one, torch.ones(1))
    assert "rand_weight" not in model.state_dict() and not model.rand_weight.requires_grad
    assert count(model) == count(net) == 20 * 20 + 20 and saved(model) == saved(net) == ["linear.weight", "linear.bias"]
    net.rand_weight = model.rand_weight.clone()
    with torch.no_grad():
        net.linear.weight.copy_(model.linear.weight)
        net.linear.bias.copy_(model.linear.bias)
    x = torch.rand(2, 20)
    out = model(x)
    torch.testing.assert_close(out, net(x, halve=False))  # PARTLY: the loop and the sum are not layers
    out.sum().backward()
    net(x, halve=False).sum().backward()
    torch.testing.assert_close(model.linear.weight.grad, net.linear.weight.grad)  # both uses added


def test_nest_mlp():
    class NestMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 20), nn.ReLU())
            self.linear = nn.Linear(20, 16)  # the notes: nn.Linear(32, 16), which cannot read 20 features

        def forward(self, X):
            return self.linear(self.net(X))

    model, plain = ours("nest_mlp"), NestMLP()
    check_same(model, plain, torch.rand(2, 20), rename=[("net.0.", "net.fc1."), ("net.2.", "net.fc2.")])
    assert [n for n, _ in model.net.named_parameters()] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    with pytest.raises(ConfigError, match=r"layer .linear. \(Linear\) failed on its input of shape \(2, 20\)"):
        ours("nest_mlp", "model.layers.linear.in_features=32")  # the notes' Linear(32, 16)


def test_try_gpu():
    def try_gpu(i=0):
        if torch.cuda.device_count() >= i + 1:
            return torch.device(f"cuda:{i}")
        return torch.device("cpu")

    model = ours("try_gpu")
    if not torch.cuda.is_available() and torch.backends.mps.is_available():
        pytest.skip("auto prefers mps here; try_gpu knows only cuda")
    assert next(model.parameters()).device.type == try_gpu().type
    absent = torch.cuda.device_count()
    with pytest.raises(ConfigError, match="trainer.device"):
        ours("try_gpu", f"trainer.device=cuda:{absent}")  # try_gpu would fall back to the CPU (PARTLY)


def test_vit_pos_embedding():
    class ViTFront(nn.Module):
        def __init__(self, num_patches=4, dim=8, num_classes=10):
            super().__init__()
            self.patches = nn.Conv2d(1, dim, kernel_size=4, stride=4)
            self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
            self.pos_embedding = nn.Parameter(torch.randn(1, num_patches + 1, dim))
            self.head = nn.Linear(dim, num_classes)

        def forward(self, img):
            x = self.patches(img.view(-1, 1, 8, 8)).flatten(2).transpose(1, 2)
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embedding
            return self.head(x[:, 0])

    model = ours("vit_pos_embedding")
    assert model.pos_embedding.shape == (1, 5, 8) and model.pos_embedding.std() > 0.3  # torch.randn
    check_same(model, ViTFront(), torch.randn(3, 64))
