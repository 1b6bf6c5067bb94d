"""Per-tensor gradient statistics: computed on the device with foreach ops, one host sync per logged step.

Keys written for each unique trainable tensor that `trainer.watch` selects (canonical name; a tied
tensor once, its gradient being the sum of its uses):
  grad_norm/<name>     L2 norm of the gradient
  grad_max/<name>      max |gradient|
  weight_norm/<name>   L2 norm of the weight after the step
  update_ratio/<name>  ||weight after - weight before|| / ||weight before||
plus `grad_norm`, the global L2 norm over the gradients of every trainable tensor, watched or not.
"""

from __future__ import annotations

from typing import Collection

import torch

from runner.model.tensors import TensorEntry

STATS = ("grad_norm", "grad_max", "weight_norm", "update_ratio")


def _abs_max(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Returns max |t| of each tensor, on the device, no sync."""
    if tensors and tensors[0].device.type == "cuda":
        return torch.stack(torch._foreach_norm(tensors, float("inf"))).float()
    # On the CPU the inf-norm kernel is ~8x slower than a min/max pass (measured in bench/, figure 3).
    return torch.stack([torch.stack(torch.aminmax(t)) for t in tensors]).float().abs().amax(1)


class GradStats:
    """Collects gradient statistics around one optimizer step, for the tensors given."""

    def __init__(self, entries: list[TensorEntry], watched: Collection[str] | None = None):
        """`entries` are every trainable tensor; per-tensor keys are written for those named in `watched` (default all)."""
        self.all_names, self.all_params = [e.name for e in entries], [e.tensor for e in entries]
        selected = [e for e in entries if watched is None or e.name in watched]
        self.names = [e.name for e in selected]
        self.params = [e.tensor for e in selected]
        self._everything = len(selected) == len(entries)
        self._device = self.all_params[0].device if self.all_params else torch.device("cpu")
        # The order after_step lays its values out in; built once, not on every logged step.
        self.keys = [f"{stat}/{name}" for stat in STATS for name in self.names] + ["grad_norm"]
        self._before: list[torch.Tensor] = []  # one persistent copy of the weights, made on first use
        self._grads: torch.Tensor | None = None

    def before_step(self) -> None:
        """Records gradient norms and the weights before the optimizer changes them (device ops only)."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        # torch._foreach_norm is what torch.nn.utils.clip_grad_norm_ itself uses: one launch per dtype/device group.
        norms = torch.stack(torch._foreach_norm(grads)).float() if grads else torch.zeros(0, device=self._device)
        self._grads = torch.stack([norms, _abs_max(grads)]) if grads else torch.zeros(2, 0, device=self._device)
        if self._everything:
            self._global = norms.square().sum().sqrt().reshape(1)
        else:
            everything = [p.grad for p in self.all_params if p.grad is not None]
            squares = torch.stack(torch._foreach_norm(everything)).float().square().sum() if everything else torch.zeros((), device=self._device)
            self._global = squares.sqrt().reshape(1)
        params = [p.detach() for p in self.params]
        if params and not self._before:
            self._before = [torch.empty_like(p) for p in params]
        torch._foreach_copy_(self._before, params)  # no allocation on logged steps after the first

    def after_step(self) -> torch.Tensor:
        """Returns every statistic in one device tensor; `record` turns its values into named floats."""
        assert self._grads is not None, "before_step must run first"
        params = [p.detach() for p in self.params]
        if not params:
            values, self._grads = self._global, None
            return values
        weight_norms = torch.stack(torch._foreach_norm(params)).float()
        before_norms = torch.stack(torch._foreach_norm(self._before)).float()
        torch._foreach_sub_(self._before, params)  # in place: before - after, the update's negative
        update_norms = torch.stack(torch._foreach_norm(self._before)).float()
        ratios = update_norms / before_norms.clamp_min(1e-12)
        values = torch.cat([self._grads.reshape(-1), weight_norms, ratios, self._global])
        self._grads = None
        return values

    def record(self, values: list[float]) -> dict[str, float]:
        """Returns {"<stat>/<name>": value, ..., "grad_norm": global} from after_step's values, as Python floats."""
        return dict(zip(self.keys, values))

    def first_non_finite_grad(self) -> str | None:
        """Returns the name of the first tensor whose gradient holds NaN or Inf (one host sync)."""
        flags = torch.stack([p.grad.isfinite().all() if p.grad is not None else torch.tensor(True, device=p.device) for p in self.all_params]).tolist()
        return next((name for name, ok in zip(self.all_names, flags) if not ok), None)
