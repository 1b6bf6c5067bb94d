"""trainer.ema_decay: an exponential moving average of the weights, evaluated beside them."""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

from runner.prepare.optim import trainable
from runner.training.callbacks import Callback, Loop
from runner.training.evaluation import Evaluation

log = logging.getLogger("runner")


class EMA(Callback):
    """An average of the trainable tensors, in a copy of the model.

    The copy keeps the model's ties (one averaged tensor per tied tensor); after every applied
    optimizer step each averaged tensor moves `1 - decay` of the way to the trained one (one foreach
    op on the device). Buffers are copied from the trained model before each evaluation.
    """

    name = "ema"

    def __init__(self, model: nn.Module, decay: float):
        self.model = copy.deepcopy(model)  # deepcopy's memo keeps tied tensors tied
        self.model.eval()
        self.decay = decay
        trained, averaged = trainable(model), trainable(self.model)
        self.names = [e.name for e in averaged]
        self.source, self.target = [e.tensor for e in trained], [e.tensor for e in averaged]
        buffers = dict(self.model.named_buffers())
        self.buffers = [(buffers[name], tensor) for name, tensor in model.named_buffers()]
        self.last: Evaluation | None = None

    @torch.no_grad()
    def on_step_end(self, loop: Loop, step: int) -> None:
        if not loop.precision.last_skipped:
            torch._foreach_lerp_(self.target, self.source, 1.0 - self.decay)

    @torch.no_grad()
    def on_eval(self, loop: Loop, record: dict[str, Any]) -> None:
        for mine, theirs in self.buffers:
            mine.copy_(theirs)
        self.last = loop.evaluate(self.model)
        record.update(self.last.record("_ema"))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: tensor.detach() for name, tensor in zip(self.names, self.target)}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Takes the saved average; a checkpoint without one (`ema_decay` added on resume) starts it from the weights."""
        if not all(name in state for name in self.names):
            log.warning("the checkpoint holds no average of the weights (trained without trainer.ema_decay): the average starts from its weights")
            return
        for name, tensor in zip(self.names, self.target):
            tensor.copy_(state[name])
