"""The shipped init presets draw what their names promise: each layer's weights against the published
formula (Glorot & Bengio 2010, He et al. 2015, Saxe et al. 2014, torch.nn.init's defaults), computed
here from the layer's shape, with a tolerance from the sample size."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import runner

Z = 5.0  # standard errors allowed: a fixed seed draws the same weights every run; this bounds how lucky they may be
RELU = math.sqrt(2.0)  # the gain torch's calculate_gain gives ReLU, which `gain: auto` reads off the next layer

# Each model's Linear/Conv layers with the gain of the activation right after them (1: none, or BatchNorm).
LAYERS = {
    "mlp": {"fc1": RELU, "fc2": RELU, "head": 1.0},
    "cnn": {"conv1": 1.0, "conv2": 1.0, "head": 1.0},  # BatchNorm sits between each conv and its ReLU
}


def _fans(shape: torch.Size) -> tuple[int, int]:
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _glorot(gain: float, fan_in: int, fan_out: int) -> float:
    return gain**2 * 2.0 / (fan_in + fan_out)


def _truncated_variance(std: float, cut: float) -> float:
    """The variance of N(0, std^2) truncated to +-cut*std: std^2 (1 - 2 cut phi(cut) / (2 Phi(cut) - 1))."""
    phi = math.exp(-cut**2 / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(cut / math.sqrt(2))
    return std**2 * (1 - 2 * cut * phi / mass)


# preset -> (law, variance(fan_in, fan_out, following gain)); orthogonal and constant are checked exactly.
PRESETS = {
    "xavier": ("uniform", lambda i, o, g: _glorot(1.0, i, o)),
    "xavier_normal": ("normal", lambda i, o, g: _glorot(1.0, i, o)),
    "xavier_gain": ("uniform", lambda i, o, g: _glorot(g, i, o)),
    "xavier_normal_gain": ("normal", lambda i, o, g: _glorot(g, i, o)),
    "kaiming": ("uniform", lambda i, o, g: 2.0 / i),
    "kaiming_normal": ("normal", lambda i, o, g: 2.0 / i),
    "normal": ("normal", lambda i, o, g: 0.01**2),
    "trunc_normal": ("truncated", lambda i, o, g: _truncated_variance(0.02, 2.0)),
    "orthogonal": ("orthogonal", lambda i, o, g: 1.0),
    "orthogonal_gain": ("orthogonal", lambda i, o, g: g**2),
    "constant": ("constant", lambda i, o, g: 0.0),
}


def _check_moments(w: torch.Tensor, variance: float, excess: float, where: str) -> None:
    """Mean 0 and E[w^2] = variance, each within Z standard errors of n draws; `excess` is
    Var(w^2) / variance^2 (kurtosis - 1: 2 for a normal, 0.8 for a uniform)."""
    n = w.numel()
    second = w.double().pow(2).mean().item()
    assert abs(second - variance) <= Z * variance * math.sqrt(excess / n), f"{where}: E[w^2] {second:.4g}, expected {variance:.4g} (n={n})"
    assert abs(w.double().mean().item()) <= Z * math.sqrt(variance / n), f"{where}: mean {w.mean().item():.4g}"


def _check_layer(law: str, w: torch.Tensor, variance: float, where: str) -> None:
    if law == "uniform":
        bound = math.sqrt(3 * variance)  # U(-a, a) has variance a^2 / 3
        _check_moments(w, variance, 0.8, where)
        assert w.abs().max().item() <= bound * (1 + 1e-6), f"{where}: outside U(-{bound:.4g}, {bound:.4g})"
    elif law == "normal":
        _check_moments(w, variance, 2.0, where)
        # A uniform of this variance stops at sqrt(3) std; a normal passes it with probability 0.083 per draw.
        assert w.abs().max().item() > math.sqrt(3 * variance), f"{where}: no draw beyond sqrt(3) std: not a normal"
    elif law == "truncated":
        _check_moments(w, variance, 2.0, where)  # truncation lowers the kurtosis below the normal's
        assert w.abs().max().item() <= 0.04, f"{where}: a draw beyond the truncation at +-0.04"
    elif law == "orthogonal":
        gain2 = variance
        rows = w.reshape(w.shape[0], -1).double()
        small = rows @ rows.T if rows.shape[0] <= rows.shape[1] else rows.T @ rows
        torch.testing.assert_close(small, gain2 * torch.eye(small.shape[0], dtype=torch.float64), rtol=0, atol=1e-5 * gain2, msg=where)
        assert rows.pow(2).mean().item() == pytest.approx(gain2 / max(rows.shape), rel=1e-5), where
    else:
        assert torch.equal(w, torch.ones_like(w)), where


@pytest.mark.parametrize("model", sorted(LAYERS))
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_each_preset_draws_its_published_scheme(model, preset):
    built = runner.build(runner.compose(["trainer.progress=off", f"model={model}", f"init={preset}"]))
    law, variance = PRESETS[preset]
    for layer, gain in LAYERS[model].items():
        module = built.get_submodule(layer)
        assert isinstance(module, (nn.Linear, nn.Conv2d))
        fan_in, fan_out = _fans(module.weight.shape)
        _check_layer(law, module.weight.detach(), variance(fan_in, fan_out, gain), f"init={preset} model={model} {layer}.weight")
        assert torch.count_nonzero(module.bias) == 0, f"{layer}.bias"

