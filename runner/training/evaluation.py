"""The loss a task trains with, and evaluation: mean loss and metrics over a split, in eval mode, one host sync."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from runner.registry.tables import LOSSES, METRICS, TASKS
from runner.spec.types import LossSpec

EVAL_CHUNK = 2048


def loss_function(task: str, loss: LossSpec) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Returns the training loss (`loss:` resolved against the task: `auto` is already its own) with its settings."""
    fn, settings = LOSSES[loss.name].fn, dict(loss.settings)
    if TASKS[task].per_token:
        return lambda out, y: fn(out, y.reshape(-1), **settings)
    return functools.partial(fn, **settings) if settings else fn


@dataclass
class Evaluation:
    loss: float
    metrics: dict[str, float] = field(default_factory=dict)  # name -> value, in `metrics:` order

    @property
    def accuracy(self) -> float | None:
        return self.metrics.get("accuracy")

    def record(self, suffix: str = "") -> dict[str, float]:
        """val_loss and val_<metric> (each with `suffix`), as eval records and summary.json name them."""
        return {f"val_loss{suffix}": self.loss, **{f"val_{name}{suffix}": value for name, value in self.metrics.items()}}


def train_mode(model: nn.Module, eval_modules: tuple[str, ...]) -> None:
    """Puts the model in training mode except the `model.eval_modules`, which stay in eval mode
    (a BatchNorm there normalizes with its running statistics and never updates them)."""
    model.train()
    for name in eval_modules:
        model.get_submodule(name).eval()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable, metrics: tuple[str, ...] = (),
             eval_modules: tuple[str, ...] = ()) -> Evaluation:
    """Returns the mean loss and the `metrics` over (x, y), in eval mode, with one host sync."""
    was_training = model.training
    model.eval()
    table = {name: METRICS[name] for name in metrics}
    sums = torch.zeros(1 + len(table), dtype=torch.float64, device=x.device)  # the loss's, then each metric's
    rows = 0
    for start in range(0, len(x), EVAL_CHUNK):
        out = model(x[start : start + EVAL_CHUNK])
        targets = y[start : start + EVAL_CHUNK]
        parts = [loss_fn(out, targets).double() * out.shape[0], *(metric.count(out, targets).double() for metric in table.values())]
        sums += torch.stack(parts)
        rows += out.shape[0]
    if was_training:
        train_mode(model, eval_modules)
    loss, *means = (value / rows for value in sums.tolist())
    return Evaluation(loss, {name: metric.finish(mean) if metric.finish else mean for (name, metric), mean in zip(table.items(), means)})
