"""The loop's own state: the epoch's step losses, kept on the device and checked for NaN/Inf in one sync."""

from __future__ import annotations

import math

import torch
from torch import nn

from runner.errors import RunError
from runner.model.distributed import Group
from runner.training.gradstats import GradStats


class Losses:
    """Each step appends its detached loss (no device op); the checks and the epoch's mean come at logged
    steps, histogram steps, checkpoints and the epoch's end, so a bad step is named exactly."""

    name = "loop"  # its checkpoint state: loop.epoch_losses

    def __init__(self, group: Group, device: torch.device, stats: GradStats | None):
        self.group, self.device, self.stats = group, device, stats
        self.values: list[torch.Tensor] = []
        self.checked = 0  # values[:checked] are known finite

    def __len__(self) -> int:
        return len(self.values)

    def append(self, loss: torch.Tensor) -> None:
        self.values.append(loss)

    def unchecked(self) -> torch.Tensor:
        """Returns the losses not yet checked (averaged over ranks), on the device."""
        pending = self.values[self.checked :]
        return self.group.mean(torch.stack(pending).float()) if pending else torch.zeros(0, device=self.device)

    def check(self, step: int, losses: list[float]) -> None:
        """Takes the unchecked losses' values (ending at `step`); raises RunError naming the first that is NaN or Inf."""
        bad = next((i for i, value in enumerate(losses) if not math.isfinite(value)), None)
        self.checked = len(self.values)
        if bad is None:
            return
        bad_step = step - (len(losses) - 1 - bad)
        culprit = self.stats.first_non_finite_grad() if self.stats is not None else None
        tensor = f"; first tensor with a non-finite gradient: {culprit!r}" if culprit else ""
        raise RunError(f"step {bad_step}: the training loss is {losses[bad]}{tensor}; stopping (the last checkpoint is intact)")

    def check_pending(self, step: int) -> None:
        if self.checked < len(self.values):
            self.check(step, self.unchecked().tolist())

    def check_local(self, step: int) -> None:
        """check_pending without a collective: rank 0 alone writes histograms, so under DDP the other ranks would
        never join one, and `checked` must stay the same on every rank."""
        if self.checked >= len(self.values):
            return
        if not self.group.active:
            self.check_pending(step)
            return
        checked = self.checked
        self.check(step, torch.stack(self.values[checked:]).float().tolist())
        self.checked = checked

    def end_epoch(self, step: int) -> float | None:
        """Checks what is unchecked and returns the epoch's mean loss over every rank (one sync); then starts a new epoch."""
        mean = None
        if self.values:
            total = self.group.mean(torch.stack(self.values).double().mean().reshape(1)).float()
            mean_and_tail = torch.cat([total, self.unchecked()]).tolist()
            self.check(step, mean_and_tail[1:])
            mean = mean_and_tail[0]
        self.values, self.checked = [], 0
        return mean

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"epoch_losses": torch.stack(self.values) if self.values else torch.zeros(0)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.values, self.checked = list(state.get("epoch_losses", torch.zeros(0)).to(self.device).unbind()), 0


def first_non_finite(model: nn.Module) -> str | None:
    """Returns the name of the first trainable parameter holding NaN or Inf, or of any other saved
    tensor holding NaN, or None (one host sync). A buffer or frozen tensor may hold ±inf on purpose
    (an attention mask of -inf set by an init rule); training never changes it."""
    trained = {name for name, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
    named = [(n, t) for n, t in model.state_dict().items() if t.is_floating_point()]
    if not named:
        return None
    ok = torch.stack([t.isfinite().all() if n in trained else ~t.isnan().any() for n, t in named]).tolist()
    return next((name for (name, _), good in zip(named, ok) if not good), None)
