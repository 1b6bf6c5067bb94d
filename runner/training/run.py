"""One training run around the loop: data on the device, optimizer, resume, the writer and saver threads,
and the summary. The caller's RNG states and environment are as they were when it returns."""

from __future__ import annotations

import logging
import math
import os
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from runner.data.loader import Serving, serving
from runner.data.tokens import TokenStream
from runner.errors import Interrupted, RunError
from runner.model.distributed import Group, launched_group, setup, teardown
from runner.model.tensors import verify_ties
from runner.prepare.optim import make_optimizer, make_scheduler
from runner.prepare.prepare import Prepared
from runner.run import checkpoint
from runner.run.checkpoint import Position
from runner.run.directory import RunDir, environment, write_json, writing
from runner.run.saver import BackgroundSaver
from runner.run.writer import NullWriter, Writer
from runner.training.callbacks import Callback
from runner.training.environment import deterministic_algorithms, own_rng
from runner.training.interrupts import Interrupts
from runner.training.loop import Loop
from runner.training.progress import progress_mode
from runner.training.summary import summarize

log = logging.getLogger("runner")


def run_training(prepared: Prepared, run_dir: Path, resume_from: Path | None = None, tracker: Any = None,
                 callbacks: Sequence[Callback] = (), interrupts: Interrupts | None = None) -> dict:
    """Trains the prepared model into run_dir (metrics, checkpoints, plots) and returns the summary.

    The caller's RNG states and environment are as they were when it returns. A failed write into
    run_dir raises RunDirWriteError; any other OSError (a lost gloo connection) is left as it is.
    `tracker` (runner.run.tracking) also gets every record, from the writer thread; `callbacks` run
    after the built-in components, in order. SIGINT or SIGTERM stops the run after its current step
    with a checkpoint there and raises Interrupted (runner.training.interrupts); `interrupts` is the
    caller's, when it listens from earlier on.
    """
    listening = nullcontext(interrupts) if interrupts is not None else Interrupts.for_run(prepared.spec.trainer)
    with own_rng(prepared.device), listening as stops:
        return _train(prepared, run_dir, resume_from, tracker, callbacks, stops)


def optimizer_steps_per_epoch(trainer: Any, batches_per_epoch: int) -> int:
    return math.ceil(batches_per_epoch / trainer.accumulate_grad_batches)


def planned_steps(trainer: Any, batches_per_epoch: int) -> int:
    """The optimizer steps a run's settings ask for: `max_steps`, else `epochs` of them."""
    return trainer.max_steps if trainer.max_steps is not None else trainer.epochs * optimizer_steps_per_epoch(trainer, batches_per_epoch)


def _train(prepared: Prepared, run_dir: Path, resume_from: Path | None, tracker: Any, callbacks: Sequence[Callback],
           interrupts: Interrupts) -> dict:
    spec, model, trainer = prepared.spec, prepared.model, prepared.spec.trainer
    with writing(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
    launched = launched_group(trainer.strategy)  # the group is joined below, after everything that may fail on one rank alone
    serve = _serving(prepared, launched)
    if serve.num_workers:  # the workers gather from CPU tensors; only the batches and the validation split go to the device
        host = prepared.data.to(torch.device("cpu"), prepared.dtype)
        batches = host.batches(trainer.batch_size, spec.seed, serve, prepared.device, launched.rank, launched.world)
        data = replace(host, val_x=host.val_x.to(prepared.device), val_y=host.val_y.to(prepared.device))
    else:
        data = prepared.data.to(prepared.device, prepared.dtype)
        batches = data.batches(trainer.batch_size, spec.seed, rank=launched.rank, world=launched.world)
    total_steps = planned_steps(trainer, batches.steps_per_epoch)
    optimizer = make_optimizer(model, spec.optim, prepared.plan.groups)
    scheduler = make_scheduler(optimizer, spec.optim.scheduler, total_steps)
    position, saved = Position(0, 0, 0), None
    if resume_from is not None:
        checkpoint.load_weights(resume_from, model)
        position, saved = checkpoint.load_training_state(resume_from, optimizer, scheduler)
        verify_ties(model, prepared.ties)
    else:
        torch.manual_seed(spec.seed)  # dropout and other stochastic layers draw from here
    group = setup(trainer.strategy, prepared.device)
    if group != launched:
        raise RunError(f"torch.distributed placed this process at rank {group.rank} of {group.world}; torchrun's RANK and WORLD_SIZE "
                       f"said {launched.rank} of {launched.world}")
    main = group.is_main  # only rank 0 writes logs, plots and checkpoints
    if main:
        write_json(RunDir(run_dir).environment, environment(prepared.device, run_dir))
    truncate = position.step if resume_from else None
    writer = Writer(run_dir, truncate, tensorboard=trainer.tensorboard, tracker=tracker) if main else NullWriter()
    saver = BackgroundSaver(RunDir(run_dir).checkpoints, trainer.keep_last, _report_saved(trainer.progress))
    loop: Loop | None = None  # None while it is built: a failure there still draws the plots and reports itself
    try:
        loop = Loop(prepared, data, batches, optimizer, scheduler, writer, saver, total_steps, group, callbacks, interrupts)
        if saved is not None:
            loop.load_state_dict(saved)
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
        if trainer.plots and main and (loop is None or loop.outcome.interrupted is None):  # an interrupted run leaves at once
            from runner.run.plots import write_plots

            write_plots(run_dir)
        teardown(group)
    assert loop is not None  # built, or the error above went on
    if loop.outcome.interrupted is not None:
        saved_to = RunDir(run_dir).checkpoints / checkpoint.directory_name(final.step)
        raise Interrupted(loop.outcome.interrupted, f"stopped after step {final.step}, checkpoint saved to {saved_to}", str(run_dir))
    return summarize(prepared, loop.outcome, loop.callbacks, loop.precision, final)


def _serving(prepared: Prepared, group: Group) -> Serving:
    """data.loader as this run serves its batches (`num_workers: auto` resolved here, and said in the log): the
    cores this process may use (its CPU affinity), shared by the ranks on this machine (torchrun's LOCAL_WORLD_SIZE)."""
    device, data = prepared.device, prepared.data
    in_process = isinstance(data, TokenStream)
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", group.world)) if group.active else 1
    serve = serving(prepared.spec.data.loader, device, 0 if in_process else data.nbytes(prepared.dtype), free, cores, local, in_process)
    if prepared.spec.data.loader.num_workers == "auto":  # said where it chose workers; the in-memory path is the usual one
        log.log(logging.INFO if serve.num_workers else logging.DEBUG, "data.loader.num_workers=auto: %d worker processes (%s)",
                serve.num_workers, serve.reason.removeprefix("auto: "))
    return serve


def _report_saved(progress: str) -> Callable[[int, Path], None]:
    """Returns the saver's callback: a log line once a checkpoint is complete and durable."""
    level = logging.INFO if progress_mode(progress) == "log" else logging.DEBUG

    def saved(step: int, path: Path) -> None:
        log.log(level, "step %d: checkpoint saved to %s", step, path)

    return saved


def _close_quietly(*closables: Any) -> None:
    for closable in closables:
        try:
            closable.close()
        except Exception:  # noqa: BLE001 - a second error would hide the first
            log.debug("while stopping after an error", exc_info=True)
