"""One optimizer step: forward and backward over a group of batches, then unscale, statistics, clip, step.

It does only what a step needs: no config lookups, no device op beyond the model's own, and no host
synchronization. A logged step also records the gradient statistics before clipping and runs the
forward pass with the activation hooks attached.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import nn

from runner.data.loader import Shard
from runner.model.activations import ActivationStats
from runner.model.distributed import Group
from runner.training.callbacks import Batches
from runner.training.gradstats import GradStats
from runner.training.precision import Precision


class Step:
    """Holds what the step needs, resolved once."""

    def __init__(self, net: nn.Module, hooked_net: nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer, scheduler: Any,
                 params: list[torch.Tensor], clip: float | None, precision: Precision, stats: GradStats | None,
                 acts: ActivationStats | None, group: Group):
        self.net, self.hooked_net, self.loss_fn, self.group = net, hooked_net, loss_fn, group
        self.optimizer, self.scheduler, self.clip, self.precision = optimizer, scheduler, clip, precision
        self.stats, self.acts = stats, acts
        self.params = params  # the trainable tensors, in the model's order (clipping's norm sums in this order)

    def sizes(self, batches: Batches) -> list[int]:
        """The rows of the global batch each of `batches` is part of: a `Shard`'s own count; under DDP a plain (x, y)
        (a callback's replacement) counts as one of `world` equal parts, so it weighs as a rank's batch in plain DDP."""
        return [batch.rows if isinstance(batch, Shard) else len(batch[0]) * self.group.world for batch in batches]

    def _loss(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, weight: float, rows: int) -> torch.Tensor:
        """Returns the batch's mean loss times `weight` (its share of the optimizer step's rows); under DDP also scaled
        by this rank's part of its global batch of `rows` rows, so that DDP's average is the global batch's gradient."""
        if self.group.active:
            weight = weight * self.group.scale(len(x), rows)
        with self.precision.autocast():
            out = net(x)
            # A rank whose part is empty (a global batch of fewer rows than ranks) adds nothing: a zero loss with
            # zero gradients, still through the model, so DDP's all-reduce sees every parameter (a mean over no rows is NaN).
            loss = self.loss_fn(out, y) if len(x) else out.sum() * 0.0
        return loss * weight if weight != 1.0 else loss

    def __call__(self, batches: Batches, logged: bool, step: int) -> torch.Tensor:
        """Takes optimizer step `step` over `batches` and returns its loss (detached, on the device). Each batch's
        loss is weighted by its share of the group's rows, so the summed gradients are those of the mean loss."""
        hooked = logged and self.acts is not None
        net = self.hooked_net if hooked else self.net
        self.optimizer.zero_grad(set_to_none=True)
        if hooked:
            self.acts.attach()  # only for this step's forward passes: other steps run without hooks
        try:
            sizes = self.sizes(batches)
            rows, loss = sum(sizes), None
            for index, ((x, y), size) in enumerate(zip(batches, sizes)):  # one batch, unless accumulating
                # Under DDP the gradients are all-reduced once, on the group's last backward pass.
                skip_sync = self.group.active and index < len(batches) - 1
                with self.net.no_sync() if skip_sync else contextlib.nullcontext():
                    part = self._loss(net, x, y, size / rows, size)  # (a lone batch's weight is exactly 1: no multiply)
                    self.precision.backward(part)
                loss = part.detach() if loss is None else loss + part.detach()
        finally:
            if hooked:
                self.acts.detach()
        self.precision.unscale(self.optimizer)  # float16: the gradients as computed, not as scaled
        if logged and self.stats is not None:
            self.stats.before_step()  # gradients as computed, before clipping
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=True)
        if self.precision.step(self.optimizer, step) and self.scheduler is not None:  # False: float16 overflowed, nothing changed
            self.scheduler.step()
        return loss
