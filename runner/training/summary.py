"""A finished run's summary (summary.json), from the loop and its components."""

from __future__ import annotations

from typing import Any

from runner.model.tensors import count_parameters, verify_ties
from runner.prepare.prepare import Prepared
from runner.run.checkpoint import Position
from runner.run.directory import weights_sha256
from runner.training.callbacks import Callback
from runner.training.ema import EMA
from runner.training.monitor import Monitor
from runner.training.precision import Precision
from runner.training.pruning import Pruning


def summarize(prepared: Prepared, outcome: Any, callbacks: list[Callback], precision: Precision, final: Position) -> dict:
    """summary.json's contents: the run's last evaluation, speed, weights hash and what its components report."""
    model = prepared.model
    verify_ties(model, prepared.ties)
    last = outcome.last_eval
    found = {type(c): c for c in callbacks}
    ema, monitor, pruning = found.get(EMA), found.get(Monitor), found.get(Pruning)
    averaged = ema.last if ema is not None else None
    return {
        "train_loss": outcome.train_loss,
        "val_loss": None,
        "val_accuracy": None,  # present (null) in every summary, as before metrics: existed
        **(last.record() if last else {}),  # val_loss and val_<metric> for each of `metrics:`
        "steps": final.step,
        "epochs": final.epoch,
        "wall_seconds": None,
        "steps_per_second": outcome.steps_timed / outcome.train_seconds if outcome.train_seconds > 0 else None,
        "parameters": count_parameters(model),
        "weights_sha256": weights_sha256(model),
        "device": str(prepared.device),
        "dtype": str(prepared.dtype).replace("torch.", ""),
        "seed": prepared.spec.seed,
        "val_loss_ema": None,
        "val_accuracy_ema": None,
        **(averaged.record("_ema") if averaged else {}),
        "best": monitor.summary() if monitor is not None else None,
        "stopped_early": outcome.stopped,
        "pruned": pruning.pruned if pruning is not None else False,
        "autocast": prepared.spec.trainer.autocast,
        "skipped_steps": precision.skipped if precision.scaler is not None else None,
    }
