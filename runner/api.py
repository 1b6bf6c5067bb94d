"""The Python API: compose, build, train, resume, load. The Hydra entrypoint is a thin shell over these."""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf
from torch import nn

from runner import checkpoint
from runner.config import compose
from runner.distributed import current_rank
from runner.errors import ConfigError, Problem, RunError
from runner.placement import DTYPES, place, resolve_device
from runner.prepare import build_declared, prepare
from runner.rundir import RunLock, write_json
from runner.spec import RunSpec, validate
from runner.tensor_table import write_tensor_table
from runner.tensors import verify_ties
from runner.training import run_training, torch_threads

__all__ = ["compose", "build", "train", "resume", "load"]


def build(cfg: DictConfig) -> nn.Module:
    """Returns the model a config declares: validated, built, initialized from the seed and placed."""
    spec = validate(cfg)
    with torch_threads(spec.trainer.threads):
        return prepare(spec).model


def train(cfg: DictConfig, run_dir: str | Path, overrides: Sequence[str] = ()) -> dict:
    """Trains the configured experiment into run_dir and returns its summary (also in summary.json).

    With `resume` set in the config, continues that run in its own directory instead, applying
    `overrides` to its saved config (see `resume`).
    """
    if cfg.get("resume"):
        return resume(cfg.resume, [o for o in overrides if not o.startswith("resume=")])
    started = time.perf_counter()
    run_dir = Path(run_dir)
    spec = validate(cfg)  # every config problem surfaces here, before any tensor exists
    return _train_spec(spec, run_dir, None, started)


def resume(run_dir: str | Path, overrides: Sequence[str] = ()) -> dict:
    """Continues a run from its latest checkpoint, in its own directory, with its saved config.

    `overrides` (dotted `key=value`, e.g. trainer.epochs=40) change the saved config; on the CPU,
    a resumed run without overrides ends with weights bit-identical to an uninterrupted one.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise ConfigError([Problem("resume", f"no such run directory: {run_dir}")])
    latest = checkpoint.latest_checkpoint(run_dir)
    if latest.parent.name == "checkpoints":
        run_dir = latest.parent.parent
    saved = _saved_config(latest)
    if overrides:
        saved = OmegaConf.merge(saved, OmegaConf.from_dotlist(list(overrides)))
    return _train_spec(validate(saved), run_dir, latest, started)


def _train_spec(spec: RunSpec, run_dir: Path, resume_from: Path | None, started: float) -> dict:
    with torch_threads(spec.trainer.threads):
        return _prepare_and_train(spec, run_dir, resume_from, started)


def _prepare_and_train(spec: RunSpec, run_dir: Path, resume_from: Path | None, started: float) -> dict:
    prepared = prepare(spec)
    main = current_rank() == 0  # under torchrun, rank 0 alone writes the run directory
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with RunLock(run_dir) if main else nullcontext():
            if main:
                (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(spec.config), encoding="utf-8")
                write_tensor_table(prepared, run_dir)
            summary = run_training(prepared, run_dir, resume_from)
            summary["wall_seconds"] = time.perf_counter() - started
            if main:
                write_json(run_dir / "summary.json", summary)
    except OSError as error:  # read-only directory, disk full: a clear stop, never a half-reported save
        raise RunError(f"cannot write the run directory {run_dir}: {error.strerror or error} ({error.filename or run_dir})") from None
    return summary


def load(path: str | Path, device: str = "cpu") -> nn.Module:
    """Returns the model of a run directory or checkpoint: rebuilt from its saved config (registered
    layer types only), weights and persistent buffers loaded, ties restored and verified,
    non-persistent buffers rebuilt, on `device`. Nothing is unpickled; file hashes are verified."""
    latest = checkpoint.latest_checkpoint(Path(path))
    saved = _saved_config(latest)
    saved.trainer.strategy = "single"  # loading is one process, whatever trained the model
    spec = validate(saved)
    model, ties, _ = build_declared(spec)
    checkpoint.load_weights(latest, model)
    place(model, resolve_device(device), DTYPES[spec.trainer.dtype])
    verify_ties(model, ties)
    model.eval()
    return model


def _saved_config(latest: Path) -> DictConfig:
    """Returns the config a checkpoint was written with (verified), as a run to continue, not to resume again."""
    saved = OmegaConf.create(checkpoint.read_state(latest)["config"])
    saved.resume = None
    return saved
