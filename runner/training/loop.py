"""The training loop: epochs of optimizer steps, logged steps, evaluation and checkpoints.

The step (runner.training.step) does only what a step needs. Logged steps add the gradient and activation
statistics and one synchronization, which also checks every loss since the last check for NaN/Inf, so
a bad step is named exactly (runner.training.losses). The logged steps are every multiple of `log_every`,
and the steps taken on the initial weights: step 1, and under float16 each step after it while every
step before was skipped for overflow (so the first gradient statistics describe the initial weights).

Everything else is a component behind the callback interface (runner.training.callbacks): the average of
the weights (ema), early stopping and keep_best (monitor), histograms, an Optuna trial (pruning), and
a user's own callbacks. Each keeps its state through state_dict/load_state_dict; the checkpoint stores
it under the component's name.

Writing happens off the training thread: records go to the writer thread (runner.run.writer), and
checkpoints are copied at their step and written by a background saver (runner.run.checkpoint).
runner.training.run sets a run up around the loop and writes what it leaves.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from runner.data.loader import Batches
from runner.data.sources import Dataset
from runner.errors import RunError
from runner.model.activations import ActivationStats
from runner.model.distributed import Group, wrap
from runner.prepare.optim import trainable
from runner.prepare.prepare import Prepared
from runner.registry.tables import callback_types
from runner.run import checkpoint
from runner.run.checkpoint import Position
from runner.run.saver import BackgroundSaver
from runner.run.writer import NullWriter, Writer
from runner.training.callbacks import RESERVED, Callback
from runner.training.ema import EMA
from runner.training.evaluation import Evaluation, evaluate, loss_function, train_mode
from runner.training.gradstats import GradStats
from runner.training.histograms import Histograms
from runner.training.interrupts import Interrupts
from runner.training.losses import Losses, first_non_finite
from runner.training.monitor import Monitor
from runner.training.precision import Precision
from runner.training.progress import progress_bar, progress_mode
from runner.training.pruning import JobTrial, Pruning
from runner.training.step import Step

log = logging.getLogger("runner")


@dataclass
class Schedule:
    """When things happen, resolved once from trainer.* so the loop reads no config."""

    total_steps: int
    log_every: int
    ckpt_every: int
    ckpt_every_epochs: int
    accumulate: int
    progress: str
    eval_modules: tuple[str, ...]
    metrics: tuple[str, ...]
    config: dict


@dataclass
class Outcome:
    """What the run has come to so far."""

    train_loss: float | None = None
    last_eval: Evaluation | None = None
    stopped: str | None = None  # why the run stops before its last step (early stopping, pruning, a callback)
    interrupted: int | None = None  # the signal (SIGINT, SIGTERM) it stopped for, after the step in progress
    checkpoint_requested: bool = False  # at this evaluation (keep_best's improvement)
    train_seconds: float = 0.0
    steps_timed: int = 0


def components(prepared: Prepared, entries: list, group: Group) -> list[Callback]:
    """The callbacks the trainer settings ask for, in the order they run: the built-in ones, then trainer.callbacks."""
    trainer, watch = prepared.spec.trainer, prepared.plan.watch
    found: list[Callback] = []
    if trainer.ema_decay is not None:
        found.append(EMA(prepared.model, trainer.ema_decay))
    if trainer.early_stopping is not None or trainer.keep_best:
        found.append(Monitor(trainer.early_stopping, bool(trainer.keep_best)))
    trial = JobTrial.from_environment()  # an Optuna trial (+search=...)
    if trial is not None:
        found.append(Pruning(trial))
    if trainer.tensorboard and group.is_main and trainer.hist_every:
        watched = [e for e in entries if e.name in watch.tensors]
        found.append(Histograms(trainer.hist_every, [e.name for e in watched], [e.tensor for e in watched]))
    registered = callback_types()
    found += [registered[c.name](**dict(c.args)) for c in trainer.callbacks]  # trainer.callbacks, after the built-ins
    return found


class Loop:
    """Runs the epochs: steps, logged steps, evaluations and checkpoints, telling the callbacks as it goes."""

    def __init__(self, prepared: Prepared, data: Dataset, batches: Batches, optimizer: torch.optim.Optimizer, scheduler: Any,
                 writer: Writer | NullWriter, saver: BackgroundSaver, total_steps: int, group: Group,
                 callbacks: Sequence[Callback], interrupts: Interrupts):
        spec, trainer, watch = prepared.spec, prepared.spec.trainer, prepared.plan.watch
        self.model, self.data, self.batches, self.writer, self.saver = prepared.model, data, batches, writer, saver
        self.schedule = Schedule(total_steps, trainer.log_every, trainer.ckpt_every, trainer.ckpt_every_epochs, trainer.accumulate_grad_batches,
                                 progress_mode(trainer.progress), prepared.plan.eval_modules,
                                 spec.metrics, spec.config)
        entries = trainable(self.model)
        stats = GradStats(entries, watch.tensors) if trainer.grad_stats else None
        acts = ActivationStats(self.model, list(watch.layers)) if trainer.activation_stats and watch.layers else None
        net = wrap(prepared.model, group, prepared.device, prepared.spec.model.has_uncalled)
        # Logged steps with activation statistics run the forward pass eagerly: hooks added to a
        # compiled model are not seen by the graph it already compiled.
        fast = torch.compile(net) if trainer.compile else net  # shares the model's tensors: checkpoints and stats are unchanged
        self.step = Step(fast, net, loss_function(spec.data.task, spec.loss), optimizer, scheduler, [e.tensor for e in entries],
                         spec.optim.clip_grad_norm, Precision(trainer.autocast, prepared.device, optimizer), stats, acts, group)
        self.losses = Losses(group, prepared.device, stats)
        self.callbacks = [*components(prepared, entries, group), *callbacks]
        names = [c.name for c in self.state_holders]
        if len(set(names)) != len(names) or RESERVED & set(names):
            raise RunError(f"callback names must be unique and not {sorted(RESERVED)}: got {names}")
        self.aliases = {e.name: list(e.aliases) for e in entries if e.aliases}
        self.outcome = Outcome()
        self.interrupts = interrupts  # what a signal asked for (runner.training.interrupts)

    # -------------------------------------------------------------- what callbacks read and call

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.step.optimizer

    @property
    def precision(self) -> Precision:
        return self.step.precision

    @property
    def stopped(self) -> str | None:
        return self.outcome.stopped

    def stop(self, reason: str) -> None:
        """Ends the run after the current evaluation, with a final checkpoint; the first reason given is kept."""
        if self.outcome.stopped is None:
            self.outcome.stopped = reason

    def request_checkpoint(self) -> None:
        """Saves a checkpoint at the end of the current evaluation, whatever `ckpt_every` says."""
        self.outcome.checkpoint_requested = True

    def evaluate(self, model: nn.Module, eval_modules: tuple[str, ...] = ()) -> Evaluation:
        """`model`'s loss and metrics on the validation split, under the run's autocast, as the trained model is evaluated."""
        with self.precision.autocast():
            return evaluate(model, self.data.val_x, self.data.val_y, self.step.loss_fn, self.schedule.metrics, eval_modules)

    # -------------------------------------------------------------- state

    @property
    def state_holders(self) -> list[Any]:
        return [self.losses, self.precision, *self.callbacks]

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """Every component's state by its name: what a checkpoint stores beside the model, optimizer and RNGs."""
        return {holder.name: holder.state_dict() for holder in self.state_holders}

    def load_state_dict(self, saved: dict[str, dict[str, torch.Tensor]]) -> None:
        for holder in self.state_holders:
            holder.load_state_dict(saved.get(holder.name, {}))

    # -------------------------------------------------------------- the run

    def run(self, position: Position) -> Position:
        schedule, outcome = self.schedule, self.outcome
        train_mode(self.model, schedule.eval_modules)
        if position.step == 0 and self.aliases:
            self.writer.write({"kind": "aliases", "step": 0, "aliases": self.aliases})
        for callback in self.callbacks:
            callback.on_train_start(self)
        bar, seen = progress_bar(schedule.progress, schedule.total_steps, position.step), 0
        step, epoch, start = position.step, position.epoch, position.batch
        if step < schedule.total_steps and self.interrupts.received is not None:  # a signal while the run was prepared:
            outcome.interrupted = self.interrupts.received  # the final checkpoint below is saved at this position, without an evaluation
        while step < schedule.total_steps and outcome.interrupted is None:
            began = time.perf_counter()
            batch = start  # batches of this epoch done, counting those before a resume
            for group in self._groups(epoch, start):
                step += 1
                batch += len(group)
                for callback in self.callbacks:
                    group = callback.on_step_start(self, step, group)
                logged = step % schedule.log_every == 0 or self.on_initial_weights(step)
                self.losses.append(self.step(group, logged, step))
                if logged:
                    self.log_step(step, epoch)
                for callback in self.callbacks:
                    callback.on_step_end(self, step)
                if bar is not None:
                    seen += sum(self.step.sizes(group))  # the global batches' rows, under DDP too
                    if bar.update(1):  # tqdm redrew the bar: the rate shows at its next redraw
                        _show_rate(bar, seen)
                if step >= schedule.total_steps:
                    break
                if self.interrupts.received is not None:  # after the step, before the next batch is fetched; decided below
                    break
                if schedule.ckpt_every and step % schedule.ckpt_every == 0 and batch < self.batches.steps_per_epoch:
                    self.save(Position(step, epoch, batch))
            outcome.train_seconds += time.perf_counter() - began
            if bar is not None:
                _show_rate(bar, seen)
            if self.interrupts.received is not None and batch < self.batches.steps_per_epoch and step < schedule.total_steps:
                outcome.interrupted = self.interrupts.received
                start = batch  # in the middle of an epoch: no evaluation, the checkpoint below resumes at this batch
                break
            self.end_epoch(step, epoch)
            epoch, start = (epoch + 1, 0) if batch == self.batches.steps_per_epoch else (epoch, batch)
            if self.interrupts.received is not None and outcome.stopped is None and step < schedule.total_steps:
                outcome.interrupted = self.interrupts.received  # (a run that stops here anyway ends as it would have)
            if outcome.stopped is not None or outcome.interrupted is not None:
                break  # the final checkpoint below is saved at this position
            due = (schedule.ckpt_every and step % schedule.ckpt_every == 0) or (
                start == 0 and schedule.ckpt_every_epochs and epoch % schedule.ckpt_every_epochs == 0)  # `epoch` epochs are done
            if (due or outcome.checkpoint_requested) and step < schedule.total_steps:
                self.save(Position(step, epoch, start))
        if bar is not None:
            bar.close()
        outcome.steps_timed = step - position.step
        if outcome.interrupted is None:  # an interrupted run has not ended: its resumed part will end it
            for callback in self.callbacks:
                callback.on_train_end(self, step)
        final = Position(step, epoch, start)
        self.save(final)
        return final

    def on_initial_weights(self, step: int) -> bool:
        """Returns whether `step` starts from the initial weights: it is step 1, or every step before it
        was a float16 step skipped for overflow (which changed nothing). The skip count is checkpointed,
        so a resumed run logs the same steps as an uninterrupted one, and never step 1 again."""
        return self.precision.skipped == step - 1

    def _groups(self, epoch: int, start: int) -> Iterator[tuple[tuple[torch.Tensor, torch.Tensor], ...]]:
        """Yields the epoch's batches from `start`, `accumulate` to an optimizer step (the epoch's last group may be shorter)."""
        group: list[tuple[torch.Tensor, torch.Tensor]] = []
        for pair in self.batches.epoch(epoch, start):
            group.append(pair)
            if len(group) == self.schedule.accumulate:
                yield tuple(group)
                group = []
        if group:
            yield tuple(group)

    def log_step(self, step: int, epoch: int) -> None:
        stats, acts = self.step.stats, self.step.acts
        unchecked = self.losses.unchecked()
        parts, keys = [unchecked], []
        # A float16 step skipped for overflow changed nothing: its gradient statistics describe no update.
        skipped = self.precision.last_skipped
        if stats is not None and not skipped:
            parts.append(stats.after_step())
            keys += stats.keys
        if acts is not None:
            act_keys, act_values = acts.collect()
            parts.append(act_values.to(unchecked.device))
            keys += act_keys
        values = torch.cat(parts).tolist() if len(parts) > 1 else unchecked.tolist()  # the one sync
        losses = values[: len(unchecked)]
        self.losses.check(step, losses)
        record = {"kind": "train", "step": step, "epoch": epoch, "loss": losses[-1], "lr": self.optimizer.param_groups[0]["lr"]}
        record.update(zip(keys, values[len(unchecked) :]))
        record.update(self.precision.record())
        if skipped:
            record["step_skipped"] = True
        if stats is not None and not skipped and not math.isfinite(record["grad_norm"]):
            raise RunError(f"step {step}: the gradient of {stats.first_non_finite_grad()!r} holds NaN or Inf; stopping (the last checkpoint is intact)")
        self.writer.write(record)

    def end_epoch(self, step: int, epoch: int) -> None:
        """Evaluates, tells the callbacks and writes the eval record."""
        outcome = self.outcome
        mean = self.losses.end_epoch(step)
        if mean is not None:
            outcome.train_loss = mean
        result = self.evaluate(self.model, self.schedule.eval_modules)  # the model is evaluated as it trains
        outcome.last_eval, outcome.checkpoint_requested = result, False
        record = {"kind": "eval", "step": step, "epoch": epoch, "train_loss": outcome.train_loss, **result.record()}
        for callback in self.callbacks:
            callback.on_eval(self, record)
        self.writer.write(record)
        if self.schedule.progress == "log":
            shown = "".join(f" val_{name} {value:.4f}" for name, value in result.metrics.items())
            log.info("epoch %d step %d/%d train_loss %.4f val_loss %.4f%s", epoch, step, self.schedule.total_steps,
                     outcome.train_loss or float("nan"), result.loss, shown)
        if outcome.stopped is not None:
            log.warning("step %d: stopping early: %s", step, outcome.stopped)

    def save(self, position: Position) -> None:
        """Copies a checkpoint's contents and hands them to the background saver, refusing to store NaN or Inf."""
        self.losses.check_pending(position.step)
        bad = first_non_finite(self.model)
        if bad is not None:
            raise RunError(f"step {position.step}: tensor {bad!r} holds NaN or Inf; no checkpoint written (the previous one is intact)")
        if not self.step.group.is_main:
            return
        keep = tuple(name for callback in self.callbacks for name in callback.checkpoints_to_keep())
        snap = checkpoint.snapshot(self.model, self.optimizer, self.step.scheduler, position, self.schedule.config,
                                   self.state_dict(), keep=keep)
        self.saver.submit(snap)


def _show_rate(bar: Any, seen: int) -> None:
    """Sets the bar's postfix to the rows trained on since it started, per second."""
    bar.set_postfix_str(f"{seen / max(bar.format_dict['elapsed'], 1e-9):.0f} samples/s", refresh=False)
