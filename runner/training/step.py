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

from runner.data.loader import Shard, batch_rows
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

    def _loss(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, weight: float, rows: int | None) -> torch.Tensor:
        """Returns the batch's mean loss times `weight` (its share of the optimizer step's rows), for this rank's shard:
        sliced here from the whole batch, or (`rows`, the global batch's) the shard the loader's workers read."""
        if self.group.active:
            if rows is None:
                x, y, scale = self.group.shard(x, y)
            else:
                scale = self.group.scale(len(x), rows)
            weight = weight * scale
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
            rows, loss = sum(batch_rows(batch) for batch in batches), None
            for index, batch in enumerate(batches):  # one batch, unless accumulating
                (x, y), size = batch, batch_rows(batch)
                # Under DDP the gradients are all-reduced once, on the group's last backward pass.
                skip_sync = self.group.active and index < len(batches) - 1
                with self.net.no_sync() if skip_sync else contextlib.nullcontext():
                    # (a lone batch's weight is exactly 1: no multiply)
                    part = self._loss(net, x, y, size / rows, size if isinstance(batch, Shard) else None)
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
