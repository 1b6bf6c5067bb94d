"""The training loop: batches, steps, evaluation, metrics, checkpoints and the run's summary.

The step does only what a step needs: no config lookups, no host synchronization except on
steps that log, and nothing converted to Python numbers otherwise.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from runner import checkpoint
from runner.checkpoint import Position
from runner.data import Batches, Dataset
from runner.errors import RunError
from runner.optim import make_optimizer
from runner.prepare import Prepared
from runner.rundir import MetricsWriter, environment, weights_sha256, write_json
from runner.tensors import count_parameters, verify_ties

log = logging.getLogger("runner")

LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "cross_entropy": F.cross_entropy, "mse": F.mse_loss, "l1": F.l1_loss, "smooth_l1": F.smooth_l1_loss,
}
EVAL_CHUNK = 2048


def loss_function(task: str, name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Returns the loss for the task (cross-entropy for classes and tokens, mse for regression) unless named."""
    if name == "auto":
        name = "mse" if task in ("regression", "reconstruction") else "cross_entropy"
    base = LOSSES[name]
    if task == "language_model":
        return lambda out, y: base(out, y.reshape(-1))
    return base


@dataclass
class Evaluation:
    loss: float
    accuracy: float | None


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable, classify: bool) -> Evaluation:
    """Returns mean loss (and accuracy for classification) over (x, y), in eval mode, one host sync."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for start in range(0, len(x), EVAL_CHUNK):
        xb, yb = x[start : start + EVAL_CHUNK], y[start : start + EVAL_CHUNK]
        out = model(xb)
        rows = out.shape[0]
        total += loss_fn(out, yb).double() * rows
        if classify:
            correct += (out.argmax(-1) == yb.reshape(-1)).sum()
    model.train(was_training)
    rows_total = len(x) * (out.shape[0] // len(xb))
    loss = (total / rows_total).item()
    return Evaluation(loss, correct.item() / rows_total if classify else None)


@contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """Turns torch's deterministic algorithms on for the run and restores the caller's setting."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(enabled)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def run_training(prepared: Prepared, run_dir: Path, resume_from: Path | None = None) -> dict:
    """Trains the prepared model, writing metrics, checkpoints and summary.json into run_dir; returns the summary."""
    spec, model, trainer = prepared.spec, prepared.model, prepared.spec.trainer
    run_dir.mkdir(parents=True, exist_ok=True)
    data = prepared.data.to(prepared.device, prepared.dtype)
    batches = Batches(data.train_x, data.train_y, trainer.batch_size, spec.seed)
    total_steps = trainer.max_steps if trainer.max_steps is not None else trainer.epochs * batches.steps_per_epoch
    optimizer = make_optimizer(model, spec.optim)
    scheduler = None
    position = Position(0, 0, 0)
    if resume_from is not None:
        checkpoint.load_weights(resume_from, model)
        position = checkpoint.load_training_state(resume_from, optimizer, scheduler)
        verify_ties(model, prepared.ties)
    else:
        torch.manual_seed(spec.seed)  # dropout and other stochastic layers draw from here
    write_json(run_dir / "environment.json", environment(prepared.device, run_dir))
    metrics = MetricsWriter(run_dir / "metrics.jsonl", truncate_after_step=position.step if resume_from else None)
    loop = _Loop(prepared, data, batches, optimizer, scheduler, metrics, run_dir, total_steps)
    try:
        with deterministic_algorithms(trainer.deterministic):
            final = loop.run(position)
    finally:
        metrics.close()
    return _summarize(prepared, loop, final, run_dir)


class _Loop:
    """Holds what the step needs, resolved once, so the step itself reads no config."""

    def __init__(self, prepared: Prepared, data: Dataset, batches: Batches, optimizer, scheduler,
                 metrics: MetricsWriter, run_dir: Path, total_steps: int):
        spec = prepared.spec
        self.model, self.data, self.batches = prepared.model, data, batches
        self.optimizer, self.scheduler, self.metrics = optimizer, scheduler, metrics
        self.run_dir, self.total_steps = run_dir, total_steps
        self.config = spec.config
        self.loss_fn = loss_function(spec.data.task, spec.trainer.loss)
        self.classify = spec.data.task in ("classification", "language_model")
        self.log_every = spec.trainer.log_every
        self.ckpt_every = spec.trainer.ckpt_every
        self.keep_last = spec.trainer.keep_last
        self.progress = _progress_mode(spec.trainer.progress)
        self.train_seconds = 0.0
        self.steps_timed = 0
        self.last_eval: Evaluation | None = None
        # The step appends its detached loss (no device op); the epoch's mean is taken once, at its end.
        self.epoch_losses: list[torch.Tensor] = []
        self.train_loss: float | None = None

    def run(self, position: Position) -> Position:
        self.model.train()
        bar = _progress_bar(self.progress, self.total_steps, position.step)
        step, epoch, start = position.step, position.epoch, position.batch
        while step < self.total_steps:
            began = time.perf_counter()
            for x, y in self.batches.epoch(epoch, start):
                loss = self.step(x, y)
                step += 1
                if step % self.log_every == 0:
                    self.log_step(step, epoch, loss)
                if self.ckpt_every and step % self.ckpt_every == 0 and step < self.total_steps:
                    self.save(_next_position(step, epoch, start + len(self.epoch_losses), self.batches.steps_per_epoch))
                if bar is not None:
                    bar.update(1)
                if step >= self.total_steps:
                    break
            self.train_seconds += time.perf_counter() - began
            done = start + len(self.epoch_losses)
            self.end_epoch(step, epoch)
            epoch, start = (epoch + 1, 0) if done == self.batches.steps_per_epoch else (epoch, done)
            self.epoch_losses.clear()
        if bar is not None:
            bar.close()
        self.steps_timed = step - position.step
        final = Position(step, epoch, start)
        self.save(final)
        return final

    def save(self, position: Position) -> None:
        """Writes a checkpoint, refusing to store NaN or Inf."""
        bad = first_non_finite(self.model)
        if bad is not None:
            raise RunError(f"step {position.step}: tensor {bad!r} holds NaN or Inf; no checkpoint written (the previous one is intact)")
        checkpoint.save_checkpoint(self.run_dir / "checkpoints", self.model, self.optimizer, self.scheduler,
                                   position, self.config, self.keep_last)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = self.loss_fn(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        detached = loss.detach()
        self.epoch_losses.append(detached)
        return detached

    def log_step(self, step: int, epoch: int, loss: torch.Tensor) -> None:
        value = loss.item()
        if not math.isfinite(value):
            raise RunError(f"step {step}: the training loss is {value}; stopping (the last checkpoint is intact)")
        record = {"kind": "train", "step": step, "epoch": epoch, "loss": value, "lr": self.optimizer.param_groups[0]["lr"]}
        self.metrics.write(record)

    def end_epoch(self, step: int, epoch: int) -> None:
        self.train_loss = torch.stack(self.epoch_losses).double().mean().item() if self.epoch_losses else None
        result = evaluate(self.model, self.data.val_x, self.data.val_y, self.loss_fn, self.classify)
        self.last_eval = result
        record = {"kind": "eval", "step": step, "epoch": epoch, "train_loss": self.train_loss, "val_loss": result.loss}
        if result.accuracy is not None:
            record["val_accuracy"] = result.accuracy
        self.metrics.write(record)
        self.metrics.flush()
        if self.progress == "log":
            accuracy = f" val_accuracy {result.accuracy:.4f}" if result.accuracy is not None else ""
            log.info("epoch %d step %d/%d train_loss %.4f val_loss %.4f%s", epoch, step, self.total_steps, self.train_loss, result.loss, accuracy)


def _next_position(step: int, epoch: int, batch: int, steps_per_epoch: int) -> Position:
    """Returns where training continues after `batch` batches of `epoch` are done."""
    return Position(step, epoch + 1, 0) if batch >= steps_per_epoch else Position(step, epoch, batch)


def first_non_finite(model: nn.Module) -> str | None:
    """Returns the name of the first parameter or buffer holding NaN or Inf, or None (one host sync)."""
    named = [(n, t) for n, t in model.state_dict().items() if t.is_floating_point()]
    if not named:
        return None
    finite = torch.stack([t.isfinite().all() for _, t in named]).tolist()
    return next((name for (name, _), ok in zip(named, finite) if not ok), None)


def _progress_mode(mode: str) -> str:
    if mode == "auto":
        return "bar" if sys.stderr.isatty() else "log"
    return mode


def _progress_bar(mode: str, total: int, done: int):
    if mode != "bar":
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="step", dynamic_ncols=True)


def _summarize(prepared: Prepared, loop: _Loop, final: Position, run_dir: Path) -> dict:
    model = prepared.model
    verify_ties(model, prepared.ties)
    last = loop.last_eval
    summary = {
        "train_loss": loop.train_loss,
        "val_loss": last.loss if last else None,
        "val_accuracy": last.accuracy if last else None,
        "steps": final.step,
        "epochs": final.epoch,
        "wall_seconds": None,
        "steps_per_second": loop.steps_timed / loop.train_seconds if loop.train_seconds > 0 else None,
        "parameters": count_parameters(model),
        "weights_sha256": weights_sha256(model),
        "device": str(prepared.device),
        "dtype": str(prepared.dtype).replace("torch.", ""),
        "seed": prepared.spec.seed,
    }
    return summary
