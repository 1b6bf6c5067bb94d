"""The training loop: batches, steps, evaluation, metrics, gradient statistics, checkpoints, summary.

The step does only what a step needs: no config lookups, no device op beyond the model's own,
and no host synchronization. Logged steps add the gradient and activation statistics and one
synchronization, which also checks every loss since the last check for NaN/Inf, so a bad step is
named exactly. The logged steps are every multiple of `log_every`, and the steps taken on the
initial weights: step 1, and under float16 each step after it while every step before was skipped
for overflow (so the first gradient statistics describe the initial weights). Histogram steps
(every `hist_every`, logged or not) check the losses the same way, then summarize weights and
gradients on the device and move the small summaries to the host.

Writing happens off the training thread: records go to the writer thread (runner.observe), and
checkpoints are copied at their step and written by a background saver (runner.checkpoint).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from runner.data.sources import Batches, Dataset
from runner.errors import RunError
from runner.model.activations import ActivationStats
from runner.model.distributed import Group, setup, teardown, wrap
from runner.model.tensors import count_parameters, verify_ties
from runner.prepare.optim import make_optimizer, make_scheduler, trainable
from runner.prepare.prepare import Prepared
from runner.registry.tables import LOSSES, TASKS
from runner.run import checkpoint
from runner.run.checkpoint import Position
from runner.run.directory import RunDir, environment, weights_sha256, write_json, writing
from runner.run.writer import NullWriter, Writer, histogram_summaries
from runner.spec import MonitorSpec
from runner.train.gradstats import GradStats
from runner.train.precision import Precision
from runner.train.pruning import JobTrial

log = logging.getLogger("runner")

EVAL_CHUNK = 2048


def loss_function(task: str, name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Returns the loss for the task (its own default unless `name` says otherwise)."""
    kind = TASKS[task]
    base = LOSSES[kind.loss if name == "auto" else name]
    if kind.per_token:
        return lambda out, y: base(out, y.reshape(-1))
    return base


@dataclass
class Evaluation:
    loss: float
    accuracy: float | None


def train_mode(model: nn.Module, eval_modules: tuple[str, ...]) -> None:
    """Puts the model in training mode except the `model.eval_modules`, which stay in eval mode
    (a BatchNorm there normalizes with its running statistics and never updates them)."""
    model.train()
    for name in eval_modules:
        model.get_submodule(name).eval()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable, classify: bool,
             eval_modules: tuple[str, ...] = ()) -> Evaluation:
    """Returns mean loss (and accuracy for classification) over (x, y), in eval mode, one host sync."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    rows = 0
    for start in range(0, len(x), EVAL_CHUNK):
        out = model(x[start : start + EVAL_CHUNK])
        targets = y[start : start + EVAL_CHUNK]
        total += loss_fn(out, targets).double() * out.shape[0]
        rows += out.shape[0]
        if classify:
            correct += (out.argmax(-1) == targets.reshape(-1)).sum()
    if was_training:
        train_mode(model, eval_modules)
    loss, hits = torch.stack([total, correct.double()]).tolist()
    return Evaluation(loss / rows, hits / rows if classify else None)


@contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """Turns torch's deterministic algorithms on for the run and restores the caller's setting.

    CUBLAS_WORKSPACE_CONFIG is left alone: torch gives each cuBLAS handle and stream its own workspace, which
    cuBLAS documents as enough for reproducible results, and torch no longer asks for the variable
    (pytorch/pytorch#161749). Setting it to ":4096:8", as older advice says, halved training steps/s on an
    H200 for the plain loop and the runner alike (bench figure 1, docs/benchmarks.md).
    """
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(enabled)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn_only)


@contextmanager
def own_rng(device: torch.device) -> Iterator[None]:
    """Runs with the caller's torch, Python and NumPy RNG states saved, and restores them after.

    Inside, the run seeds the global torch RNG (dropout draws from it) or restores a checkpoint's
    states, which covers every CUDA device once CUDA is in use.
    """
    cuda = device.type == "cuda" or (torch.cuda.is_available() and torch.cuda.is_initialized())
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda else []):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Runs with `count` torch threads (0: leave as is), then restores the caller's setting.

    It must cover init as well as training: some kernels (the QR behind orthogonal init, matmul
    reductions) give other bits with another thread count.
    """
    previous = torch.get_num_threads()
    if count > 0:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_training(prepared: Prepared, run_dir: Path, resume_from: Path | None = None, tracker: Any = None) -> dict:
    """Trains the prepared model into run_dir (metrics, checkpoints, plots) and returns the summary.

    The caller's RNG states and environment are as they were when it returns. A failed write into
    run_dir raises RunDirWriteError; any other OSError (a lost gloo connection) is left as it is.
    `tracker` (runner.tracking) also gets every record, from the writer thread.
    """
    with own_rng(prepared.device):
        return _train(prepared, run_dir, resume_from, tracker)


def _train(prepared: Prepared, run_dir: Path, resume_from: Path | None, tracker: Any) -> dict:
    spec, model, trainer = prepared.spec, prepared.model, prepared.spec.trainer
    with writing(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
    data = prepared.data.to(prepared.device, prepared.dtype)
    batches = Batches(data.train_x, data.train_y, trainer.batch_size, spec.seed)
    steps_per_epoch = math.ceil(batches.steps_per_epoch / trainer.accumulate_grad_batches)  # optimizer steps
    total_steps = trainer.max_steps if trainer.max_steps is not None else trainer.epochs * steps_per_epoch
    optimizer = make_optimizer(model, spec.optim, prepared.plan.groups)
    scheduler = make_scheduler(optimizer, spec.optim.scheduler, total_steps)
    position, epoch_losses, extra = Position(0, 0, 0), [], {}
    if resume_from is not None:
        checkpoint.load_weights(resume_from, model)
        position, extra = checkpoint.load_training_state(resume_from, optimizer, scheduler)
        epoch_losses = list(extra.get("loop.epoch_losses", torch.zeros(0)).to(prepared.device).unbind())
        verify_ties(model, prepared.ties)
    else:
        torch.manual_seed(spec.seed)  # dropout and other stochastic layers draw from here
    group = setup(trainer.strategy, prepared.device)
    main = group.is_main  # only rank 0 writes logs, plots and checkpoints
    if main:
        write_json(RunDir(run_dir).environment, environment(prepared.device, run_dir))
    truncate = position.step if resume_from else None
    writer = Writer(run_dir, truncate, tensorboard=trainer.tensorboard, tracker=tracker) if main else NullWriter()
    saver = checkpoint.BackgroundSaver(RunDir(run_dir).checkpoints, trainer.keep_last, _report_saved(trainer.progress))
    try:
        loop = _Loop(prepared, data, batches, optimizer, scheduler, writer, saver, run_dir, total_steps, group)
        loop.epoch_losses = epoch_losses
        if "loop.monitor" in extra:
            loop.monitor.restore(extra["loop.monitor"])
        if loop.ema is not None and resume_from is not None:
            loop.ema.restore(extra)
        loop.precision.restore(extra)
        with deterministic_algorithms(trainer.deterministic):
            final = loop.run(position)
    except BaseException:
        _close_quietly(saver, writer)  # the error in flight is the one to report
        raise
    else:
        try:
            saver.close()  # the final checkpoint is durable before the summary says the run is done
        finally:
            writer.close()
    finally:
        if trainer.plots and main:
            from runner.run.plots import write_plots

            write_plots(run_dir)
        teardown(group)
    return _summarize(prepared, loop, final)


def _report_saved(progress: str) -> Callable[[int, Path], None]:
    """Returns the saver's callback: a log line once a checkpoint is complete and durable."""
    level = logging.INFO if _progress_mode(progress) == "log" else logging.DEBUG

    def saved(step: int, path: Path) -> None:
        log.log(level, "step %d: checkpoint saved to %s", step, path)

    return saved


def _close_quietly(*closables: Any) -> None:
    for closable in closables:
        try:
            closable.close()
        except Exception:  # noqa: BLE001 - a second error would hide the first
            log.debug("while stopping after an error", exc_info=True)


class _Loop:
    """Holds what the step needs, resolved once, so the step itself reads no config."""

    def __init__(self, prepared: Prepared, data: Dataset, batches: Batches, optimizer, scheduler,
                 writer: Writer | NullWriter, saver: checkpoint.BackgroundSaver, run_dir: Path, total_steps: int, group: Group):
        spec, trainer, watch = prepared.spec, prepared.spec.trainer, prepared.plan.watch
        self.model, self.data, self.batches = prepared.model, data, batches
        self.optimizer, self.scheduler, self.writer, self.saver = optimizer, scheduler, writer, saver
        self.run_dir, self.total_steps, self.config = run_dir, total_steps, spec.config
        self.eval_modules, self.device = prepared.plan.eval_modules, prepared.device
        self.group, self.net = group, wrap(prepared.model, group, prepared.device, prepared.spec.model.has_uncalled)
        # Logged steps with activation statistics run the forward pass eagerly: hooks added to a
        # compiled model are not seen by the graph it already compiled.
        self.hooked_net = self.net
        if trainer.compile:
            self.net = torch.compile(self.net)  # shares the model's tensors: checkpoints and stats are unchanged
        self.loss_fn = loss_function(spec.data.task, trainer.loss)
        self.classify = TASKS[spec.data.task].classifies
        self.log_every, self.ckpt_every, self.accumulate = trainer.log_every, trainer.ckpt_every, trainer.accumulate_grad_batches
        self.hist_every = trainer.hist_every if trainer.tensorboard and group.is_main else 0
        self.progress = _progress_mode(trainer.progress)
        entries = trainable(self.model)
        self.params = [e.tensor for e in entries]
        watched = [e for e in entries if e.name in watch.tensors]
        self.watched_names, self.watched = [e.name for e in watched], [e.tensor for e in watched]
        self.clip = spec.optim.clip_grad_norm
        self.stats = GradStats(entries, watch.tensors) if trainer.grad_stats else None
        self.acts = ActivationStats(self.model, list(watch.layers)) if trainer.activation_stats and watch.layers else None
        self.aliases = {e.name: list(e.aliases) for e in entries if e.aliases}
        self.train_seconds, self.steps_timed = 0.0, 0
        self.monitor = Monitor(trainer.early_stopping, bool(trainer.keep_best))
        self.ema = Average(self.model, trainer.ema_decay) if trainer.ema_decay is not None else None
        self.precision = Precision(trainer.autocast, prepared.device, optimizer)
        # An Optuna trial (+search=...): each evaluation's val_loss is reported; the pruner may stop the run.
        self.trial = JobTrial.from_environment()
        self.evaluations, self.pruned = 0, False
        self.at_step = 0  # the optimizer step being taken, for messages
        self.last_eval: Evaluation | None = None
        self.last_eval_ema: Evaluation | None = None
        self.train_loss: float | None = None
        # The step appends its detached loss (no device op); checks and means come at logged steps.
        self.epoch_losses: list[torch.Tensor] = []
        self.checked = 0  # epoch_losses[:checked] are known finite

    def run(self, position: Position) -> Position:
        train_mode(self.model, self.eval_modules)
        if position.step == 0 and self.aliases:
            self.writer.write({"kind": "aliases", "step": 0, "aliases": self.aliases})
        bar = _progress_bar(self.progress, self.total_steps, position.step)
        step, epoch, start = position.step, position.epoch, position.batch
        while step < self.total_steps:
            began = time.perf_counter()
            batch = start  # batches of this epoch done, counting those before a resume
            for group in self._groups(epoch, start):
                step += 1
                self.at_step = step
                batch += len(group)
                logged = step % self.log_every == 0 or self.on_initial_weights(step)
                self.step(group, logged)
                if logged:
                    self.log_step(step, epoch)
                if self.hist_every and step % self.hist_every == 0 and not self.precision.last_skipped:
                    self._histograms(step)  # its own interval: a step need not be logged to get histograms
                if bar is not None:
                    bar.update(1)
                if step >= self.total_steps:
                    break
                if self.ckpt_every and step % self.ckpt_every == 0 and batch < self.batches.steps_per_epoch:
                    self.save(Position(step, epoch, batch))
            self.train_seconds += time.perf_counter() - began
            improved = self.end_epoch(step, epoch)
            epoch, start = (epoch + 1, 0) if batch == self.batches.steps_per_epoch else (epoch, batch)
            if self.monitor.stopped is not None:
                break  # the final checkpoint below is saved at this position
            due = self.ckpt_every and step % self.ckpt_every == 0
            if (due or (improved and self.monitor.keep_best)) and step < self.total_steps:
                self.save(Position(step, epoch, start))
        if bar is not None:
            bar.close()
        self.steps_timed = step - position.step
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
            if len(group) == self.accumulate:
                yield tuple(group)
                group = []
        if group:
            yield tuple(group)

    def _loss(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, weight: float) -> torch.Tensor:
        """Returns the batch's mean loss times `weight` (its share of the optimizer step's rows), for this rank's shard."""
        if self.group.active:
            x, y, scale = self.group.shard(x, y)
            weight = weight * scale
        with self.precision.autocast():
            loss = self.loss_fn(net(x), y)
        return loss * weight if weight != 1.0 else loss

    def step(self, group: tuple[tuple[torch.Tensor, torch.Tensor], ...], logged: bool) -> None:
        """One optimizer step over a group of batches: each batch's loss is weighted by its share of the
        group's rows, so the summed gradients are those of the mean loss over all of them."""
        hooked = logged and self.acts is not None
        net = self.hooked_net if hooked else self.net
        self.optimizer.zero_grad(set_to_none=True)
        if hooked:
            self.acts.attach()  # only for this step's forward passes: other steps run without hooks
        try:
            rows, loss = sum(len(x) for x, _ in group), None
            for index, (x, y) in enumerate(group):  # one batch, unless accumulating
                # Under DDP the gradients are all-reduced once, on the group's last backward pass.
                skip_sync = self.group.active and index < len(group) - 1
                with self.net.no_sync() if skip_sync else contextlib.nullcontext():
                    part = self._loss(net, x, y, len(x) / rows)  # a lone batch's weight is exactly 1: no multiply
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
        if self.precision.step(self.optimizer, self.at_step):  # False: float16 gradients overflowed, nothing changed
            if self.scheduler is not None:
                self.scheduler.step()
            if self.ema is not None:
                self.ema.update()
        self.epoch_losses.append(loss)

    def _unchecked(self) -> torch.Tensor:
        """Returns the losses not yet checked for NaN/Inf (averaged over ranks), on the device."""
        pending = self.epoch_losses[self.checked :]
        return self.group.mean(torch.stack(pending).float()) if pending else torch.zeros(0, device=self.device)

    def log_step(self, step: int, epoch: int) -> None:
        unchecked = self._unchecked()
        parts, keys = [unchecked], []
        # A float16 step skipped for overflow changed nothing: its gradient statistics describe no update.
        skipped = self.precision.last_skipped
        if self.stats is not None and not skipped:
            parts.append(self.stats.after_step())
            keys += self.stats.keys
        if self.acts is not None:
            act_keys, act_values = self.acts.collect()
            parts.append(act_values.to(unchecked.device))
            keys += act_keys
        values = torch.cat(parts).tolist() if len(parts) > 1 else unchecked.tolist()  # the one sync
        losses = values[: len(unchecked)]
        self._check_losses(step, losses)
        record = {"kind": "train", "step": step, "epoch": epoch, "loss": losses[-1], "lr": self.optimizer.param_groups[0]["lr"]}
        record.update(zip(keys, values[len(unchecked) :]))
        record.update(self.precision.record())
        if skipped:
            record["step_skipped"] = True
        if self.stats is not None and not skipped and not math.isfinite(record["grad_norm"]):
            raise RunError(f"step {step}: the gradient of {self.stats.first_non_finite_grad()!r} holds NaN or Inf; stopping (the last checkpoint is intact)")
        self.writer.write(record)

    def _check_losses(self, step: int, losses: list[float]) -> None:
        """Raises RunError naming the first step since the last check whose loss was NaN or Inf."""
        bad = next((i for i, value in enumerate(losses) if not math.isfinite(value)), None)
        self.checked = len(self.epoch_losses)
        if bad is None:
            return
        bad_step = step - (len(losses) - 1 - bad)
        culprit = self.stats.first_non_finite_grad() if self.stats is not None else None
        tensor = f"; first tensor with a non-finite gradient: {culprit!r}" if culprit else ""
        raise RunError(f"step {bad_step}: the training loss is {losses[bad]}{tensor}; stopping (the last checkpoint is intact)")

    def _histograms(self, step: int) -> None:
        if self.checked < len(self.epoch_losses):  # NaN weights would fail in TensorBoard, not name their step
            if self.group.active:
                # Rank 0 alone writes histograms: no collective here (the other ranks would never join it),
                # and `checked` must stay the same on every rank, so this looks at the local losses only.
                checked = self.checked
                self._check_losses(step, torch.stack(self.epoch_losses[checked:]).float().tolist())
                self.checked = checked
            else:
                self._check_losses(step, self._unchecked().tolist())
        tags, tensors = [], []
        for name, param in zip(self.watched_names, self.watched):
            if param.numel() == 0:
                continue
            tags.append(f"weights/{name}")
            tensors.append(param)
            if param.grad is not None:
                tags.append(f"grads/{name}")
                tensors.append(param.grad)
        if tensors:  # summarized on the device; only min, max, sums and bin counts reach the host
            self.writer.histograms(step, tags, [t.numel() for t in tensors], histogram_summaries(tensors).cpu())

    def end_epoch(self, step: int, epoch: int) -> bool:
        """Evaluates, writes the eval record; returns whether the monitored metric improved."""
        if self.epoch_losses:
            mean = self.group.mean(torch.stack(self.epoch_losses).double().mean().reshape(1)).float()
            mean_and_tail = torch.cat([mean, self._unchecked()]).tolist()  # one sync
            self._check_losses(step, mean_and_tail[1:])
            self.train_loss = mean_and_tail[0]
        with self.precision.autocast():  # the model is evaluated as it trains
            result = evaluate(self.model, self.data.val_x, self.data.val_y, self.loss_fn, self.classify, self.eval_modules)
        self.last_eval = result
        record = {"kind": "eval", "step": step, "epoch": epoch, "train_loss": self.train_loss, "val_loss": result.loss}
        if result.accuracy is not None:
            record["val_accuracy"] = result.accuracy
        if self.ema is not None:
            self.ema.copy_buffers()
            with self.precision.autocast():
                averaged = evaluate(self.ema.model, self.data.val_x, self.data.val_y, self.loss_fn, self.classify)
            self.last_eval_ema = averaged
            record["val_loss_ema"] = averaged.loss
            if averaged.accuracy is not None:
                record["val_accuracy_ema"] = averaged.accuracy
        self.writer.write(record)
        self.epoch_losses, self.checked = [], 0
        if self.progress == "log":
            accuracy = f" val_accuracy {result.accuracy:.4f}" if result.accuracy is not None else ""
            log.info("epoch %d step %d/%d train_loss %.4f val_loss %.4f%s", epoch, step, self.total_steps, self.train_loss or float("nan"), result.loss, accuracy)
        improved = self.monitor.observe(record, step)
        self.evaluations += 1
        # Optuna's step is the evaluation's index (0, 1, ...): pruners compare trials at equal steps.
        if self.trial is not None and self.monitor.stopped is None and self.trial.pruned(result.loss, self.evaluations - 1):
            self.pruned = True
            self.monitor.stopped = f"pruned by the Optuna search at evaluation {self.evaluations} (val_loss {result.loss:.6g})"
        if self.monitor.stopped is not None:
            log.warning("step %d: stopping early: %s", step, self.monitor.stopped)
        return improved

    def save(self, position: Position) -> None:
        """Copies a checkpoint's contents and hands them to the background saver, refusing to store NaN or Inf."""
        if self.checked < len(self.epoch_losses):
            self._check_losses(position.step, self._unchecked().tolist())
        bad = first_non_finite(self.model)
        if bad is not None:
            raise RunError(f"step {position.step}: tensor {bad!r} holds NaN or Inf; no checkpoint written (the previous one is intact)")
        if not self.group.is_main:
            return
        losses = torch.stack(self.epoch_losses) if self.epoch_losses else torch.zeros(0)
        extra = {"loop.epoch_losses": losses, "loop.monitor": self.monitor.state(), **self.precision.state(),
                 **(self.ema.state() if self.ema is not None else {})}
        snap = checkpoint.snapshot(self.model, self.optimizer, self.scheduler, position, self.config, extra, keep=self.monitor.keep())
        self.saver.submit(snap)


class Average:
    """trainer.ema_decay: an exponential moving average of the trainable tensors, in a copy of the model.

    The copy keeps the model's ties (one averaged tensor per tied tensor); after every optimizer
    step each averaged tensor moves `1 - decay` of the way to the trained one (one foreach op on
    the device). Buffers are copied from the trained model before each evaluation.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.model = copy.deepcopy(model)  # deepcopy's memo keeps tied tensors tied
        self.model.eval()
        self.decay = decay
        trained, averaged = trainable(model), trainable(self.model)
        self.names = [e.name for e in averaged]
        self.source, self.target = [e.tensor for e in trained], [e.tensor for e in averaged]
        buffers = dict(self.model.named_buffers())
        self.buffers = [(buffers[name], tensor) for name, tensor in model.named_buffers()]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.target, self.source, 1.0 - self.decay)

    @torch.no_grad()
    def copy_buffers(self) -> None:
        for mine, theirs in self.buffers:
            mine.copy_(theirs)

    def state(self) -> dict[str, torch.Tensor]:
        return {f"{checkpoint.EMA_PREFIX}{name}": tensor.detach() for name, tensor in zip(self.names, self.target)}

    @torch.no_grad()
    def restore(self, extra: dict[str, torch.Tensor]) -> None:
        """Takes the average a checkpoint saved; one saved without (an `ema_decay` added on resume) starts it from the weights."""
        keys = [f"{checkpoint.EMA_PREFIX}{name}" for name in self.names]
        if not all(key in extra for key in keys):
            log.warning("the checkpoint holds no average of the weights (trained without trainer.ema_decay): the average starts from its weights")
            return
        for key, tensor in zip(keys, self.target):
            tensor.copy_(extra[key])


class Monitor:
    """trainer.early_stopping and trainer.keep_best: the monitored metric's best value, and when to stop.

    Without early_stopping, keep_best monitors val_loss (lower is better). Its state is saved in
    every checkpoint, so a resumed run stops where the uninterrupted one would.
    """

    def __init__(self, spec: MonitorSpec | None, keep_best: bool):
        self.active = spec is not None or keep_best
        self.spec, self.stops, self.keep_best = spec or MonitorSpec(), spec is not None, keep_best
        self.best = math.inf if self.spec.mode == "min" else -math.inf
        self.best_step: int | None = None
        self.bad = 0  # evaluations since the last improvement
        self.stopped: str | None = None

    def observe(self, record: dict, step: int) -> bool:
        """Takes an eval record; returns whether the metric improved (by more than min_delta)."""
        value = record.get(self.spec.metric)
        if not self.active or value is None:
            return False
        delta = self.spec.min_delta
        improved = value < self.best - delta if self.spec.mode == "min" else value > self.best + delta
        if improved:
            self.best, self.best_step, self.bad = value, step, 0
        else:
            self.bad += 1
            if self.stops and self.bad >= self.spec.patience:
                self.stopped = (f"{self.spec.metric} has not improved by more than {delta:g} for {self.bad} evaluation{'s' if self.bad > 1 else ''} "
                                f"(best {self.best:.6g} at step {self.best_step})")
        return improved

    def keep(self) -> tuple[str, ...]:
        """Returns the checkpoint directory names pruning must keep: the best one, with keep_best."""
        return (checkpoint.directory_name(self.best_step),) if self.keep_best and self.best_step is not None else ()

    def state(self) -> torch.Tensor:
        return torch.tensor([self.best, -1 if self.best_step is None else self.best_step, self.bad], dtype=torch.float64)

    def restore(self, saved: torch.Tensor) -> None:
        best, best_step, bad = saved.tolist()
        self.best, self.best_step, self.bad = best, None if best_step < 0 else int(best_step), int(bad)

    def summary(self) -> dict | None:
        if not self.active or self.best_step is None:
            return None
        best = {"metric": self.spec.metric, "mode": self.spec.mode, "value": self.best, "step": self.best_step}
        if self.keep_best:
            best["checkpoint"] = f"checkpoints/{checkpoint.directory_name(self.best_step)}"
        return best


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


def _progress_mode(mode: str) -> str:
    if mode == "auto":
        return "bar" if sys.stderr.isatty() else "log"
    return mode


def _progress_bar(mode: str, total: int, done: int):
    if mode != "bar":
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="step", dynamic_ncols=True)


def _summarize(prepared: Prepared, loop: _Loop, final: Position) -> dict:
    model = prepared.model
    verify_ties(model, prepared.ties)
    last = loop.last_eval
    return {
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
        "val_loss_ema": loop.last_eval_ema.loss if loop.last_eval_ema else None,
        "val_accuracy_ema": loop.last_eval_ema.accuracy if loop.last_eval_ema else None,
        "best": loop.monitor.summary(),
        "stopped_early": loop.monitor.stopped,
        "pruned": loop.pruned,
        "autocast": prepared.spec.trainer.autocast,
        "skipped_steps": loop.precision.skipped if loop.precision.scaler is not None else None,
    }
