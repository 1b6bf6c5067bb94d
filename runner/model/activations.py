"""Per-layer activation statistics, from forward hooks attached for one forward pass at a time.

Keys written for each watched leaf layer (a module with no submodules) whose output is a
floating-point tensor, by its path name:
  act_mean/<layer>   mean of the layer's output over all its elements (batch included)
  act_std/<layer>    standard deviation of the same elements (population: divided by n)
A layer called several times in one forward pass (a shared module) is reported over all its
outputs together. The hooks exist only during the forward pass of a logged step, so every
other step runs the model exactly as it would without statistics.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn


def leaf_layers(model: nn.Module) -> list[str]:
    """Returns the path names of the model's leaf modules, in model order (the model itself excluded).

    A layer whose only child is its `parametrizations` (a transposed tie) counts as a leaf.
    """
    return [name for name, module in model.named_modules()
            if name and ".parametrizations" not in name and all(child == "parametrizations" for child, _ in module.named_children())]


class ActivationStats:
    """Collects the output mean and std of the given layers over one forward pass."""

    def __init__(self, model: nn.Module, layers: list[str]):
        self.layers = [(name, model.get_submodule(name)) for name in layers]
        self._handles: list = []
        self._calls: dict[str, list[tuple[int, torch.Tensor, torch.Tensor]]] = {}

    def attach(self) -> None:
        """Hooks every layer for the next forward pass."""
        self._calls = {}
        self._handles = [module.register_forward_hook(partial(self._record, name)) for name, module in self.layers]

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _record(self, name: str, module: nn.Module, args: tuple, output: object) -> None:
        # No torch.no_grad() needed: `detach` keeps these ops out of the autograd graph.
        if isinstance(output, torch.Tensor) and output.is_floating_point() and output.numel() > 0:
            values = output.detach()
            if values.dtype not in (torch.float32, torch.float64):
                values = values.float()
            # Two passes (mean, then the norm of the deviations), computed now: a later in-place
            # layer may change this output. As exact as torch.std_mean, and about 5x faster on the
            # CPU, whose std_mean kernel is a scalar Welford loop.
            mean = values.mean()
            self._calls.setdefault(name, []).append((values.numel(), mean, torch.linalg.vector_norm(values - mean)))

    def collect(self) -> tuple[list[str], torch.Tensor]:
        """Returns the keys (act_mean/... then act_std/..., model order) and their values in one device tensor."""
        names = [name for name, _ in self.layers if name in self._calls]
        if not names:
            return [], torch.zeros(0)
        means, stds = [], []
        for name in names:
            calls = self._calls[name]
            if len(calls) == 1:
                count, mean, norm = calls[0]
                std = norm / math.sqrt(count)
            else:  # pooled over calls: total variance = within-call variance + spread of the call means
                counts = torch.tensor([n for n, _, _ in calls], dtype=torch.float32, device=calls[0][1].device)
                call_means, norms = torch.stack([m for _, m, _ in calls]), torch.stack([q for _, _, q in calls])
                mean = (counts * call_means).sum() / counts.sum()
                std = ((norms.square() + counts * (call_means - mean).square()).sum() / counts.sum()).sqrt()
            means.append(mean)
            stds.append(std)
        self._calls = {}
        keys = [f"act_mean/{name}" for name in names] + [f"act_std/{name}" for name in names]
        return keys, torch.stack(means + stds)
