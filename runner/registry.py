"""The closed sets of names a config may use, each taken from what implements it.

Layer types (torch.nn's layers and the project's own), optimizers (torch.optim's classes, whose
constructor signatures are the table of arguments a config may set), losses and tasks. Nothing
outside these registries is ever constructed, whatever a config or a saved run says.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from runner.layers import PROJECT_LAYERS

# Containers and parameter holders that are not layers; Sequential is built by the project itself.
_NOT_LAYERS = {"Module", "ModuleList", "ModuleDict", "ParameterList", "ParameterDict", "Container"}

CONTAINERS = ("Sequential", "Residual")


@lru_cache(maxsize=1)
def layer_types() -> dict[str, type[nn.Module]]:
    """Returns class name -> class for every layer a model config may use."""
    types: dict[str, type[nn.Module]] = {}
    for name in dir(nn):
        obj = getattr(nn, name)
        if inspect.isclass(obj) and issubclass(obj, nn.Module) and name not in _NOT_LAYERS:
            if not name.startswith("_") and not name.startswith("Lazy"):
                types[name] = obj
    types.update(PROJECT_LAYERS)
    return types


def module_type_names(cls: type) -> set[str]:
    """Returns the class names a module counts as for `module:` selectors (subclasses included)."""
    return {base.__name__ for base in cls.__mro__ if issubclass(base, nn.Module)}


# ---------------------------------------------------------------- optimizers

# LBFGS needs a closure per step and SparseAdam sparse gradients: neither fits the loop.
_NOT_OPTIMIZERS = {"Optimizer", "LBFGS", "SparseAdam"}


@lru_cache(maxsize=1)
def optimizers() -> dict[str, type[torch.optim.Optimizer]]:
    """Returns `optim.name` -> torch.optim class (lower-cased class name: sgd, adam, adamw, rmsprop, ...)."""
    found = {}
    for name in dir(torch.optim):
        obj = getattr(torch.optim, name)
        if inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer) and name not in _NOT_OPTIMIZERS:
            found[name.lower()] = obj
    return found


@lru_cache(maxsize=None)
def optimizer_arguments(name: str) -> dict[str, inspect.Parameter]:
    """Returns argument -> its signature entry (default and annotation) for every hyperparameter the
    optimizer's constructor takes."""
    signature = inspect.signature(optimizers()[name].__init__)
    return {
        p.name: p
        for p in signature.parameters.values()
        if p.name not in ("self", "params") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


SCHEDULERS = ("none", "step", "cosine", "warmup_cosine")

# ---------------------------------------------------------------- tasks and losses

LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "cross_entropy": F.cross_entropy, "mse": F.mse_loss, "l1": F.l1_loss, "smooth_l1": F.smooth_l1_loss,
}


@dataclass(frozen=True)
class Task:
    """What a task means: its default loss, the dtypes of its inputs and targets, how outputs line up."""

    loss: str
    input_dtype: torch.dtype
    target_dtype: torch.dtype
    per_token: bool = False  # outputs are one row per input token (language models)

    @property
    def classifies(self) -> bool:
        return self.target_dtype == torch.long


TASKS: dict[str, Task] = {
    "classification": Task("cross_entropy", torch.float32, torch.long),
    "regression": Task("mse", torch.float32, torch.float32),
    "reconstruction": Task("mse", torch.float32, torch.float32),
    "language_model": Task("cross_entropy", torch.long, torch.long, per_token=True),
}
