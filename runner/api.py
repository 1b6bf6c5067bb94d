"""The Python API: compose, build, train, resume, load. The Hydra entrypoint is a thin shell over these."""

from __future__ import annotations

import json
import math
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from torch import nn

from runner.config.compose import compose, resume_composition
from runner.config.schema import upgraded
from runner.data.sources import Dataset
from runner.errors import ConfigError, Interrupted, Problem, Problems
from runner.init import pretrained
from runner.init.apply import apply_init
from runner.model.distributed import current_rank
from runner.model.placement import place, resolve_device
from runner.model.tensors import verify_ties
from runner.prepare.machine import check_device
from runner.prepare.plan import Plan, check
from runner.prepare.prepare import prepare
from runner.prepare.tensor_table import write_tensor_table
from runner.registry.tables import DTYPES
from runner.run import checkpoint, tracking
from runner.run.directory import RunDir, RunLock, write_json, writing
from runner.training.callbacks import Callback
from runner.training.environment import torch_threads
from runner.training.interrupts import Interrupts
from runner.training.run import optimizer_steps_per_epoch, planned_steps, run_training

__all__ = ["compose", "build", "train", "resume", "load"]


def build(cfg: DictConfig) -> nn.Module:
    """Returns the model a config declares: validated, built, initialized from the seed and placed."""
    plan, data = check(cfg)
    with torch_threads(plan.threads):
        return prepare(plan, data).model


def train(cfg: DictConfig, run_dir: str | Path, overrides: Sequence[str] = (), callbacks: Sequence[Callback] = ()) -> dict:
    """Trains the configured experiment into run_dir and returns its summary (also in summary.json).

    `callbacks` (runner.Callback) are told of every step and evaluation, after the built-in components.

    With `resume` set in the config, continues that run in its own directory instead, composing
    its saved config with `overrides` (see `resume`).
    """
    if cfg.get("resume") is not None:
        if not isinstance(cfg.resume, str) or not cfg.resume:
            raise ConfigError([Problem("resume", f"expected the path of a run directory or checkpoint, got {cfg.resume!r}")])
        return resume(cfg.resume, [o for o in overrides if not o.startswith("resume=")], callbacks)
    started = time.perf_counter()
    plan, data = check(cfg)  # every config and machine problem surfaces here, before any tensor exists
    return _train_plan(plan, data, Path(run_dir), None, started, callbacks)


def resume(run_dir: str | Path, overrides: Sequence[str] = (), callbacks: Sequence[Callback] = ()) -> dict:
    """Continues a run from its latest checkpoint, in its own directory, with its saved config.

    `overrides` take the grammar of a new run (trainer.epochs=40, model=cnn, +optim.eps=1e-8),
    applied to the saved config. On the CPU, a resumed run without overrides ends with weights
    bit-identical to an uninterrupted one.
    """
    started = time.perf_counter()
    latest, run_dir = locate_run(run_dir)
    cfg = compose_resumed(latest, run_dir, overrides)
    return continue_run(cfg, run_dir, latest, started, callbacks)


def locate_run(path: str | Path) -> tuple[Path, Path]:
    """Returns (latest checkpoint, run directory) for a run directory or one of its checkpoints."""
    path = Path(path)
    if not path.exists():
        raise ConfigError([Problem("resume", f"no such run directory: {path}")])
    latest = checkpoint.latest_checkpoint(path)
    return latest, latest.parent.parent if latest.parent.name == RunDir.CHECKPOINTS else path


def compose_resumed(latest: Path, run_dir: Path, overrides: Sequence[str]) -> DictConfig:
    """Returns the config of a resumed run: its saved config as the primary config, with `overrides`."""
    with resume_composition(saved_config(latest), run_dir, list(overrides)) as (config_dir, composed):
        return compose(composed, config_dir=config_dir)


def continue_run(cfg: DictConfig, run_dir: Path, latest: Path, started: float | None = None, callbacks: Sequence[Callback] = ()) -> dict:
    """Trains on from `latest` with a config composed by `compose_resumed` (or the CLI's resume)."""
    started = time.perf_counter() if started is None else started
    plan, data = check(cfg)
    _refuse_going_back(plan, data, latest)
    _refuse_another_model(plan, latest)
    return _train_plan(plan, data, run_dir, latest, started, callbacks)


def _refuse_another_model(plan: Plan, latest: Path) -> None:
    """A resumed run must be the model that was trained, started as it was: otherwise its config.yaml would
    describe weights that never existed (and another model's checkpoint may not even load)."""
    problems = model_changes(saved_config(latest), plan.spec.config, "a resumed run cannot change its {section} (its weights and config.yaml "
                                                                     "would then disagree): start a new run (experiment=finetune shows how "
                                                                     "to start from this run's weights)")
    if problems:
        raise ConfigError(problems)


def model_changes(saved: dict, config: dict, why: str) -> list[Problem]:
    """A Problem for each of `model` and `init` that `config` changes from a run's `saved` config, naming the first
    key that differs and its trained value, then `why` (with `{section}` filled in). Used by resume and evaluate."""
    problems = []
    for section in ("model", "init"):
        changed = _first_difference(saved.get(section), config.get(section), section)
        if changed is not None:
            key, before = changed
            if key == f"{section}.name":  # another option of the group: model=cnn
                key = section
            problems.append(Problem(key, f"the run was trained with {key}={before}; {why.format(section=section)}"))
    return problems


def _first_difference(before: Any, after: Any, key: str) -> tuple[str, Any] | None:
    """The first dotted key (in `before`'s order, then `after`'s) whose value differs, with its value in `before`.
    A key the saved config lacks is no difference while its new value is empty or off (None, {}, [], false): a
    setting added to the schema after the run was saved, at its default. NaN equals NaN."""
    if isinstance(before, dict) and isinstance(after, dict):
        for name in [*before, *(k for k in after if k not in before and after[k] not in (None, {}, [], False))]:
            found = _first_difference(before.get(name), after.get(name), f"{key}.{name}")
            if found is not None:
                return found
        return None
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        for index, (a, b) in enumerate(zip(before, after)):
            found = _first_difference(a, b, f"{key}[{index}]")
            if found is not None:
                return found
        return None
    same = before == after or (isinstance(before, float) and isinstance(after, float) and math.isnan(before) and math.isnan(after))
    return None if same else (key, before)


def _refuse_going_back(plan: Plan, data: Any, latest: Path) -> None:
    """A resumed run's settings must not end before the steps it has already trained: its config.yaml
    would then describe a shorter run than the weights come from."""
    trainer, done = plan.spec.trainer, int(checkpoint.read_state(latest)["step"])
    batches = data.batches(trainer.batch_size, plan.spec.seed).steps_per_epoch
    per_epoch, wanted = optimizer_steps_per_epoch(trainer, batches), planned_steps(trainer, batches)
    if wanted >= done:
        return
    if trainer.max_steps is not None:
        problem = Problem("trainer.max_steps", f"the run has trained {done} steps; trainer.max_steps={trainer.max_steps} would end before them "
                                               f"(resume with trainer.max_steps >= {done}, or start a new run)")
    else:
        problem = Problem("trainer.epochs", f"the run has trained {done} steps ({done / per_epoch:g} epochs of {per_epoch}); trainer.epochs="
                                            f"{trainer.epochs} would end before them (resume with trainer.epochs >= {math.ceil(done / per_epoch)}, "
                                            "or start a new run)")
    raise ConfigError([problem])


# What a run writes into its directory (Hydra's .hydra/ and log are Hydra's): cleared before a
# sweep job runs again from scratch in a directory an earlier, failed or different run used.


def sweep_job(cfg: DictConfig, run_dir: Path) -> tuple[dict, str]:
    """One job of a multirun, continuing what an earlier run of the same sweep left in `run_dir`.

    Returns the summary and how it came about: `reused` (that run finished with the same config:
    nothing is trained), `resumed` (it stopped early with the same config: on from its newest
    checkpoint), `rerun` (it failed, or had another config: trained again from scratch) or `trained`.
    """
    started = time.perf_counter()
    plan, data = check(cfg)
    earlier = _earlier_run(plan, run_dir)
    if earlier == "finished":
        return json.loads(RunDir(run_dir).summary.read_text(encoding="utf-8")), "reused"
    if earlier == "unfinished":
        return _train_plan(plan, data, run_dir, checkpoint.latest_checkpoint(run_dir), started), "resumed"
    cleared = _clear_outputs(run_dir)
    return _train_plan(plan, data, run_dir, None, started), "rerun" if cleared else "trained"


def _earlier_run(plan: Plan, run_dir: Path) -> str | None:
    """`finished` or `unfinished` for a run of this very config in run_dir (not failed), else None."""
    files = RunDir(run_dir)
    saved = files.config
    if not saved.is_file() or files.error.is_file():
        return None
    if yaml.safe_load(saved.read_text(encoding="utf-8")) != yaml.safe_load(OmegaConf.to_yaml(_saved(plan))):
        return None
    if files.summary.is_file():
        return "finished"
    return "unfinished" if checkpoint.list_checkpoints(files.checkpoints) else None


def _clear_outputs(run_dir: Path) -> bool:
    """Removes what an earlier run wrote into run_dir; returns whether there was anything."""
    found = [path for pattern in RunDir.OUTPUTS for path in run_dir.glob(pattern)] if run_dir.is_dir() else []
    with writing(run_dir):
        for path in found:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return bool(found)


def _train_plan(plan: Plan, data: Dataset | None, run_dir: Path, resume_from: Path | None, started: float,
                callbacks: Sequence[Callback] = ()) -> dict:
    # Listening from before the model is built: a signal while it is prepared stops the run at step 0, with a checkpoint.
    with torch_threads(plan.threads), Interrupts.for_run(plan.spec.trainer) as interrupts:
        prepared = prepare(plan, data)
        main = current_rank() == 0  # under torchrun, rank 0 alone writes the run directory
        with writing(run_dir):
            run_dir.mkdir(parents=True, exist_ok=True)
        with RunLock(run_dir) if main else nullcontext():
            if main:
                with writing(run_dir):
                    RunDir(run_dir).config.write_text(OmegaConf.to_yaml(_saved(plan)), encoding="utf-8")
                    write_tensor_table(prepared, run_dir)
            tracker = tracking.start(plan.spec.tracker, plan.spec.config, run_dir, resume_from is not None) if main else None
            try:
                summary = run_training(prepared, run_dir, resume_from, tracker, callbacks, interrupts)
                summary["wall_seconds"] = time.perf_counter() - started
                if main:
                    with writing(run_dir):
                        write_json(RunDir(run_dir).summary, summary)
            except BaseException as error:
                if tracker is not None:
                    tracker.finish("KILLED" if isinstance(error, Interrupted) else "FAILED")
                raise
            if tracker is not None:
                tracker.finish()
        if interrupts.received is not None:  # it came as the last step ended: the run is complete, but the command (a sweep) stops
            raise Interrupted(interrupts.received, "the run had finished its last step (summary.json is written)",
                              hint=f"nothing to resume in {run_dir}")
    return summary


def _saved(plan: Plan) -> dict:
    """Returns the config as it is saved: resolved, and never a run to resume again."""
    return {**plan.spec.config, "resume": None}


def load(path: str | Path, device: str = "cpu", ema: bool = False) -> nn.Module:
    """Returns the model of a run directory or checkpoint, computing what training computed.

    Rebuilt from its saved config (registered layer types only); every init rule is replayed from
    the saved seed, so non-persistent buffers hold the values they had in training; then weights
    and persistent buffers are loaded (file hashes verified, nothing unpickled), ties restored and
    verified, and the model placed on `device`. Neither the training data nor the training device
    is needed: a run trained on a GPU loads on a CPU. `ema=True` returns the averaged weights of a
    run trained with `trainer.ema_decay` (its buffers are the trained model's).
    """
    problems = Problems()
    check_device(device, "load(device=...)", problems)
    problems.raise_if_any()
    latest = checkpoint.latest_checkpoint(Path(path))
    plan, _ = check(saved_config(latest), machine=False)  # the training device and data are not needed
    with torch_threads(plan.threads):  # init replayed on the threads training initialized with: some kernels' bits depend on them
        model = plan.materialize()
        # No batch: LSUV's scaling comes with the weights, as do pretrained values (but those of buffers a checkpoint does not keep).
        apply_init(model, plan.init, plan.spec.seed, modifiers=plan.modifiers, pretrained=pretrained.read(plan, kinds=("non-persistent buffer",)))
    checkpoint.load_weights(latest, model)
    if ema:
        checkpoint.load_ema(latest, model)
    place(model, resolve_device(device), DTYPES[plan.spec.trainer.dtype])
    verify_ties(model, plan.declarations.ties)
    model.eval()
    return model


def saved_config(latest: Path) -> dict:
    """Returns the config a checkpoint was written with (verified), as a run to continue, not to resume again."""
    saved = upgraded(dict(checkpoint.read_state(latest)["config"]))
    saved["resume"] = None
    return saved
