"""trainer.autocast: the forward pass and the loss under torch.autocast, weights in trainer.dtype.

bfloat16 needs nothing else. float16's narrow range needs loss scaling: a torch.amp.GradScaler
multiplies the loss before backward, unscales the gradients before they are clipped or measured,
and skips an optimizer step whose gradients overflowed (lowering the scale). A skipped step
leaves the weights, the schedule and the weight average as they were; it is counted, and the
count and the scale are logged and checkpointed, so a resumed run scales as the uninterrupted
one did.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import ContextManager

import torch

from runner.errors import RunError
from runner.spec.trainer import AUTOCAST as AUTOCAST_NAMES

AUTOCAST = {name: getattr(torch, name) for name in AUTOCAST_NAMES}  # trainer.autocast's names -> dtypes

# A float16 run whose every step overflows for this long will never train: the scale would fall to 0.
MAX_CONSECUTIVE_SKIPS = 50


class Precision:
    """How the step computes: an autocast context, and for float16 a GradScaler and its skipped-step count."""

    name = "precision"  # its checkpoint state: precision.grad_scaler

    def __init__(self, autocast: str | None, device: torch.device, optimizer: torch.optim.Optimizer):
        self.dtype = AUTOCAST[autocast] if autocast is not None else None
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type) if autocast == "float16" else None
        self.skipped = 0  # optimizer steps skipped in the run so far
        self.consecutive = 0
        self.last_skipped = False
        self._stepped = False
        self._scale = self.scaler.get_scale() if self.scaler is not None else None
        # An unfused optimizer's step runs only when the gradients are finite, so a post-hook tells
        # whether it ran without a host sync of its own. A fused one (optim `fused: true`) always
        # runs and skips inside; for it the scale's fall tells (one host sync per step).
        self.fused = bool(getattr(optimizer, "_step_supports_amp_scaling", False))
        if self.scaler is not None and not self.fused:
            optimizer.register_step_post_hook(self._ran)

    def autocast(self) -> ContextManager:
        return torch.autocast(self.device_type, self.dtype) if self.dtype is not None else nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Divides the gradients by the loss scale, in place, before they are clipped or measured."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer, step: int) -> bool:
        """Runs the optimizer step; returns False when float16 gradients overflowed and it was skipped."""
        if self.scaler is None:
            optimizer.step()
            return True
        self._stepped = False
        self.scaler.step(optimizer)
        self.scaler.update()
        if self.fused:
            scale = self.scaler.get_scale()
            self._stepped, self._scale = scale >= self._scale, scale
        self.last_skipped = not self._stepped
        if self.last_skipped:
            self.skipped += 1
            self.consecutive += 1
            if self.consecutive >= MAX_CONSECUTIVE_SKIPS:
                raise RunError(f"step {step}: the float16 gradients overflowed on {self.consecutive} consecutive steps (loss scale now "
                               f"{self.scaler.get_scale():g}); the run cannot train: use trainer.autocast=bfloat16, or a lower optim.lr")
        else:
            self.consecutive = 0
        return not self.last_skipped

    def _ran(self, _optimizer: torch.optim.Optimizer, _args: tuple, _kwargs: dict) -> None:
        self._stepped = True

    def record(self) -> dict[str, float | int]:
        """The float16 keys of a train record: the loss scale and the steps skipped so far (one host sync)."""
        if self.scaler is None:
            return {}
        return {"grad_scale": self.scaler.get_scale(), "skipped_steps": self.skipped}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps: the scale, its growth tracker and the skipped-step count."""
        if self.scaler is None:
            return {}
        saved = self.scaler.state_dict()
        return {"grad_scaler": torch.tensor([saved["scale"], saved["_growth_tracker"], self.skipped, self.consecutive], dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Takes a checkpoint's scaler state; without one (float16 turned on at resume) the scaler starts fresh."""
        if self.scaler is None or "grad_scaler" not in state:
            return
        scale, tracker, skipped, consecutive = state["grad_scaler"].tolist()
        self.scaler.load_state_dict({**self.scaler.state_dict(), "scale": scale, "_growth_tracker": int(tracker)})
        self.skipped, self.consecutive, self._scale = int(skipped), int(consecutive), scale
