"""trainer.early_stopping and trainer.keep_best: the monitored metric's best value, and when to stop."""

from __future__ import annotations

import math
from typing import Any

import torch

from runner.run.checkpoint import directory_name
from runner.spec.types import MonitorSpec
from runner.training.callbacks import Callback, Loop


class Monitor(Callback):
    """Watches one metric of each evaluation's record. Without early_stopping, keep_best monitors
    val_loss (lower is better). Its state is in every checkpoint, so a resumed run stops where the
    uninterrupted one would."""

    name = "monitor"

    def __init__(self, spec: MonitorSpec | None, keep_best: bool):
        self.spec, self.stops, self.keep_best = spec or MonitorSpec(), spec is not None, keep_best
        self.best = math.inf if self.spec.mode == "min" else -math.inf
        self.best_step: int | None = None
        self.bad = 0  # evaluations since the last improvement
        self.improved = False  # at the latest evaluation

    def on_eval(self, loop: Loop, record: dict[str, Any]) -> None:
        """Compares the record's metric with the best so far (an improvement beats it by more than min_delta)."""
        value = record.get(self.spec.metric)
        self.improved = False
        if value is None:
            return
        delta = self.spec.min_delta
        self.improved = value < self.best - delta if self.spec.mode == "min" else value > self.best + delta
        if self.improved:
            self.best, self.best_step, self.bad = value, record["step"], 0
            if self.keep_best:
                loop.request_checkpoint()
            return
        self.bad += 1
        if self.stops and self.bad >= self.spec.patience:
            loop.stop(f"{self.spec.metric} has not improved by more than {delta:g} for {self.bad} evaluation{'s' if self.bad > 1 else ''} "
                      f"(best {self.best:.6g} at step {self.best_step})")

    def checkpoints_to_keep(self) -> tuple[str, ...]:
        return (directory_name(self.best_step),) if self.keep_best and self.best_step is not None else ()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"state": torch.tensor([self.best, -1 if self.best_step is None else self.best_step, self.bad], dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "state" in state:
            best, best_step, bad = state["state"].tolist()
            self.best, self.best_step, self.bad = best, None if best_step < 0 else int(best_step), int(bad)

    def summary(self) -> dict | None:
        if self.best_step is None:
            return None
        best = {"metric": self.spec.metric, "mode": self.spec.mode, "value": self.best, "step": self.best_step}
        if self.keep_best:
            best["checkpoint"] = f"checkpoints/{directory_name(self.best_step)}"
        return best
