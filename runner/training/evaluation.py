"""The loss a task trains with, and evaluation: mean loss (and accuracy) over a split, in eval mode, one host sync."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from runner.registry.tables import LOSSES, TASKS

EVAL_CHUNK = 2048


def loss_function(task: str, name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Returns the loss for the task (its own default unless `name` says otherwise)."""
    kind = TASKS[task]
    base = LOSSES[kind.loss if name == "auto" else name]
    if kind.per_token:
        return lambda out, y: base(out, y.reshape(-1))
    return base


@dataclass
class Evaluation:
    loss: float
    accuracy: float | None


def train_mode(model: nn.Module, eval_modules: tuple[str, ...]) -> None:
    """Puts the model in training mode except the `model.eval_modules`, which stay in eval mode
    (a BatchNorm there normalizes with its running statistics and never updates them)."""
    model.train()
    for name in eval_modules:
        model.get_submodule(name).eval()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable, classify: bool,
             eval_modules: tuple[str, ...] = ()) -> Evaluation:
    """Returns mean loss (and accuracy for classification) over (x, y), in eval mode, one host sync."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    rows = 0
    for start in range(0, len(x), EVAL_CHUNK):
        out = model(x[start : start + EVAL_CHUNK])
        targets = y[start : start + EVAL_CHUNK]
        total += loss_fn(out, targets).double() * out.shape[0]
        rows += out.shape[0]
        if classify:
            correct += (out.argmax(-1) == targets.reshape(-1)).sum()
    if was_training:
        train_mode(model, eval_modules)
    loss, hits = torch.stack([total, correct.double()]).tolist()
    return Evaluation(loss / rows, hits / rows if classify else None)
