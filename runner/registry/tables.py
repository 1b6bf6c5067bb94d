"""The closed sets of names a config may use, each taken from what implements it.

Layer types (torch.nn's layers, the project's own and those registered by the user or by
installed plugins), optimizers (torch.optim's classes, whose constructor signatures are the table
of arguments a config may set), losses and tasks. Nothing outside these registries is ever
constructed, whatever a config or a saved run says: a config only names what is registered, and
what is registered comes from code (`register_layer`, `register_init`) or from the entry points of
installed distributions (groups `runner.layers` and `runner.inits`), never from a config.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from runner.errors import Problems
from runner.registry.layers import PROJECT_LAYERS

# Containers and parameter holders that are not layers; Sequential is built by the project itself.
_NOT_LAYERS = {"Module", "ModuleList", "ModuleDict", "ParameterList", "ParameterDict", "Container"}

CONTAINERS = ("Sequential", "Residual")


# Layer types added by register_layer (from code or a `runner.layers` entry point): name -> class.
_REGISTERED: dict[str, type[nn.Module]] = {}


@lru_cache(maxsize=1)
def layer_types() -> dict[str, type[nn.Module]]:
    """Returns class name -> class for every layer a model config may use (plugins loaded first)."""
    load_plugins()
    return {**_builtin_layer_types(), **_REGISTERED}


@lru_cache(maxsize=1)
def _builtin_layer_types() -> dict[str, type[nn.Module]]:
    types: dict[str, type[nn.Module]] = {}
    for name in dir(nn):
        obj = getattr(nn, name)
        if inspect.isclass(obj) and issubclass(obj, nn.Module) and name not in _NOT_LAYERS:
            if not name.startswith("_") and not name.startswith("Lazy"):
                types[name] = obj
    types.update(PROJECT_LAYERS)
    return types


def register_layer(name: str, cls: type[nn.Module]) -> None:
    """Makes `cls` nameable as `type: <name>` in model configs; its config keys are its constructor's.

    Registering the class a name already means is a no-op; a name that means another class (a
    torch.nn name, a project layer, an earlier registration) is refused.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"layer type name {name!r} must be a Python identifier")
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise ValueError(f"layer type {name!r} must be a subclass of torch.nn.Module, got {cls!r}")
    known = {**_builtin_layer_types(), **_REGISTERED}
    if known.get(name) is cls:
        return
    if name in known:
        raise ValueError(f"layer type {name!r} already means {qualified_name(known[name])}; it cannot also mean {qualified_name(cls)}")
    if hasattr(nn, name):
        raise ValueError(f"{name!r} is torch.nn.{name}, which is not a layer a config may use; register {qualified_name(cls)} under another name")
    _REGISTERED[name] = cls
    layer_types.cache_clear()


def qualified_name(obj: Any) -> str:
    """Returns 'module.QualName' for a class or function, for messages that name two of them."""
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


# ---------------------------------------------------------------- plugins

# Entry-point group -> the function that registers one of its objects. runner.registry.init_functions
# adds `runner.inits` when it is imported, so this module imports nothing above it.
PLUGIN_GROUPS: dict[str, Callable[[str, Any], None]] = {}
_loaded: set[str] = set()  # groups whose entry points are registered


def add_plugin_group(group: str, register: Callable[[str, Any], None]) -> None:
    """Declares an entry-point group whose objects `register(name, obj)` registers."""
    PLUGIN_GROUPS[group] = register


add_plugin_group("runner.layers", register_layer)


# Callbacks added by register_callback (from code or a `runner.callbacks` entry point): name -> class.
_CALLBACKS: dict[str, type] = {}
CALLBACK_HOOKS = ("on_train_start", "on_step_start", "on_step_end", "on_eval", "on_train_end", "state_dict", "load_state_dict")


def register_callback(name: str, cls: type) -> None:
    """Makes a runner.Callback subclass nameable in `trainer.callbacks` (its constructor's arguments are its keys)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"callback name {name!r} must be a Python identifier")
    if not isinstance(cls, type) or not all(hasattr(cls, hook) for hook in CALLBACK_HOOKS):
        raise ValueError(f"callback {name!r} must be a subclass of runner.Callback, got {cls!r}")
    if _CALLBACKS.get(name, cls) is not cls:
        raise ValueError(f"callback {name!r} already means {qualified_name(_CALLBACKS[name])}; it cannot also mean {qualified_name(cls)}")
    _CALLBACKS[name] = cls


add_plugin_group("runner.callbacks", register_callback)


def callback_types() -> dict[str, type]:
    """Returns every callback `trainer.callbacks` may name (plugins loaded first)."""
    load_plugins()
    return dict(_CALLBACKS)


def load_plugins() -> None:
    """Registers the objects of installed distributions' entry points, once per group.

    `[project.entry-points."runner.layers"] MyLayer = "pkg.module:MyLayer"` registers
    `pkg.module.MyLayer` as `type: MyLayer` (and `runner.inits` an init function as `fn: <name>`).
    A plugin that fails to import, or is not a layer class or a function, is a ConfigError naming
    the entry point and its distribution; every broken one is reported together.
    """
    pending = [group for group in PLUGIN_GROUPS if group not in _loaded]
    if not pending:
        return
    _loaded.update(pending)  # first: a plugin's own import may ask for layer_types()
    from importlib.metadata import entry_points

    problems = Problems()
    for group in pending:
        for entry in entry_points(group=group):
            where = f"entry point {group}:{entry.name} ({entry.value}, from {_distribution(entry)})"
            try:
                obj = entry.load()
            except Exception as error:  # any failure inside a plugin's import is the plugin's
                problems.add(where, f"cannot be imported: {type(error).__name__}: {error}; fix or uninstall the plugin")
                continue
            try:
                PLUGIN_GROUPS[group](entry.name, obj)
            except ValueError as error:
                problems.add(where, str(error))
    if problems:
        _loaded.difference_update(pending)  # reported again by the next call rather than silently left out
        problems.raise_if_any()


def _distribution(entry: Any) -> str:
    dist = getattr(entry, "dist", None)
    return f"distribution {dist.metadata['Name']} {dist.version}" if dist is not None else "an unknown distribution"


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


def _no_schedule(_optimizer: torch.optim.Optimizer, _cfg: Any, _total_steps: int) -> None:
    return None


def _step(optimizer: torch.optim.Optimizer, cfg: Any, _total_steps: int) -> Any:
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)


def _cosine(optimizer: torch.optim.Optimizer, cfg: Any, total_steps: int) -> Any:
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1), eta_min=cfg.min_lr)


def _warmup_cosine(optimizer: torch.optim.Optimizer, cfg: Any, total_steps: int) -> Any:
    from torch.optim import lr_scheduler

    warmup = lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=max(cfg.warmup_steps, 1))
    cosine = lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps - cfg.warmup_steps, 1), eta_min=cfg.min_lr)
    return lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[max(cfg.warmup_steps, 1)])


# `optim.scheduler.name` -> fn(optimizer, scheduler settings, total optimizer steps) -> a scheduler stepped
# once per optimizer step, or None.
SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer, Any, int], Any]] = {
    "none": _no_schedule, "step": _step, "cosine": _cosine, "warmup_cosine": _warmup_cosine,
}

# `trainer.dtype` -> the dtype floating tensors are placed in.
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}

# `tracker.name` -> the module it needs installed (checked on this machine before any work).
TRACKERS: dict[str, str] = {"mlflow": "mlflow"}

# ---------------------------------------------------------------- tasks and losses

@dataclass(frozen=True)
class Metric:
    """An evaluation metric: `count(outputs, targets)` gives a chunk's sum over its rows, the metric is
    that sum over the split / its rows, passed through `finish` when given. `mode` is the direction of
    better (early stopping's default), `classifies` whether it needs class scores."""

    count: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    finish: Callable[[float], float] | None = None
    mode: str = "max"
    classifies: bool = True


def _hits(out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (out.argmax(-1) == targets.reshape(-1)).sum()


def _top5_hits(out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (out.topk(min(5, out.shape[-1]), dim=-1).indices == targets.reshape(-1, 1)).any(-1).sum()


def _cross_entropy_sum(out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out.float(), targets.reshape(-1), reduction="sum")


def _exp(mean: float) -> float:
    import math

    return math.exp(mean) if mean < 700 else float("inf")


# `metrics:` names -> Metric; register_metric (or a `runner.metrics` entry point) adds to it.
METRICS: dict[str, Metric] = {
    "accuracy": Metric(_hits),
    "top5": Metric(_top5_hits),
    # exp of the mean plain cross-entropy (whatever `loss:` trains with, label smoothing included): a language model's
    "perplexity": Metric(_cross_entropy_sum, finish=_exp, mode="min"),
}


def register_metric(name: str, count: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], mode: str = "max") -> None:
    """Makes `metrics: [name]` log `val_<name>`: count(outputs, targets) returns a chunk's sum over its rows
    (e.g. the number of hits), as a tensor; the metric is that sum over the validation split / its rows."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"metric name {name!r} must be a Python identifier")
    if not callable(count):
        raise ValueError(f"metric {name!r} must be callable (outputs, targets) -> a tensor summed over the rows")
    if mode not in ("min", "max"):
        raise ValueError(f"metric {name!r}: mode must be min or max, got {mode!r}")
    if name in METRICS and METRICS[name].count is not count:
        raise ValueError(f"metric {name!r} already means {qualified_name(METRICS[name].count)}")
    METRICS[name] = Metric(count, mode=mode, classifies=False)


add_plugin_group("runner.metrics", register_metric)


def metric_names() -> dict[str, Metric]:
    """Every metric `metrics:` may name (plugins loaded first)."""
    load_plugins()
    return dict(METRICS)


@dataclass(frozen=True)
class Loss:
    """A loss: `fn(outputs, targets, **settings)`, the mean over the rows. `settings` are the `loss.<key>`
    it takes, each with its range (low, high, whether low itself is allowed); `classifies`: its targets are class ids."""

    fn: Callable[..., torch.Tensor]
    settings: dict[str, tuple[float, float | None, bool]] = field(default_factory=dict)
    classifies: bool = False


# `loss.name` -> Loss (auto: the task's own, see TASKS).
LOSSES: dict[str, Loss] = {
    "cross_entropy": Loss(F.cross_entropy, {"label_smoothing": (0.0, 1.0, True)}, classifies=True),
    "mse": Loss(F.mse_loss),
    "l1": Loss(F.l1_loss),
    "smooth_l1": Loss(F.smooth_l1_loss, {"beta": (0.0, None, True)}),
    "huber": Loss(F.huber_loss, {"delta": (0.0, None, False)}),
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
