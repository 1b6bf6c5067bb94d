"""The Python API: compose, build, train, load. The Hydra entrypoint is a thin shell over these."""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from torch import nn

from runner.config import compose
from runner.tensor_table import write_tensor_table
from runner.prepare import prepare
from runner.rundir import write_json
from runner.spec import validate
from runner.training import run_training

__all__ = ["compose", "build", "train"]


def build(cfg: DictConfig) -> nn.Module:
    """Returns the model a config declares: validated, built, initialized from the seed and placed."""
    return prepare(validate(cfg)).model


def train(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Trains the configured experiment into run_dir and returns its summary (also in summary.json)."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    spec = validate(cfg)  # every config problem surfaces here, before any tensor exists
    prepared = prepare(spec)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(spec.config), encoding="utf-8")
    write_tensor_table(prepared, run_dir)
    summary = run_training(prepared, run_dir)
    summary["wall_seconds"] = time.perf_counter() - started
    write_json(run_dir / "summary.json", summary)
    return summary
