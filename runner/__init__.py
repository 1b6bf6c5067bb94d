"""runner: a declarative, config-driven experiment runner for PyTorch.

    cfg = runner.compose(["model=mlp", "init=xavier"])
    model = runner.build(cfg)            # built, initialized, placed
    summary = runner.train(cfg, "runs/x")
"""

from runner.api import build, compose, load, resume, train
from runner.errors import ConfigError, RunError
from runner.registry.init_functions import register_init
from runner.registry.tables import register_callback, register_layer
from runner.training.callbacks import Callback

__all__ = ["compose", "build", "train", "resume", "load", "register_layer", "register_init", "register_callback", "Callback", "ConfigError", "RunError"]
