"""runner: a declarative, config-driven experiment runner for PyTorch.

    cfg = runner.compose(["model=mlp", "init=xavier"])
    model = runner.build(cfg)            # built, initialized, placed
    summary = runner.train(cfg, "runs/x")

The names below are imported on first use, so that `python -m runner --help` and a mistyped
override are answered before torch is imported (about 3 s).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runner.api import build, compose, load, resume, train
    from runner.errors import ConfigError, Interrupted, RunError
    from runner.evaluate import evaluate, predict
    from runner.registry.init_functions import register_init
    from runner.registry.tables import register_callback, register_layer, register_metric
    from runner.training.callbacks import Callback

_HOMES = {
    "compose": "runner.api", "build": "runner.api", "train": "runner.api", "resume": "runner.api", "load": "runner.api",
    "evaluate": "runner.evaluate", "predict": "runner.evaluate",
    "register_layer": "runner.registry.tables", "register_callback": "runner.registry.tables", "register_metric": "runner.registry.tables",
    "register_init": "runner.registry.init_functions", "Callback": "runner.training.callbacks",
    "ConfigError": "runner.errors", "RunError": "runner.errors", "Interrupted": "runner.errors",
}
__all__ = ["compose", "build", "train", "resume", "load", "evaluate", "predict", "register_layer", "register_callback", "register_metric", "register_init", "Callback",
           "ConfigError", "RunError", "Interrupted"]


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'runner' has no attribute {name!r}")
    value = getattr(import_module(_HOMES[name]), name)
    globals()[name] = value  # once imported, an ordinary module attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
