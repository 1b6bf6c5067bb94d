"""Config -> validated spec. Every problem is found here, before any real tensor exists.

`validate` checks each config group, then builds the model on PyTorch's meta device (shapes
only, no memory) so that constructor arguments, layer shapes, ties and init rules are all
checked against the real module tree, and reports everything it found in one ConfigError.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from runner.config import DataConfig, InitConfig, OptimConfig, RunConfig, TrainerConfig
from runner.errors import ConfigError, Problem, Problems, suggest
from runner.optim import check_scheduler
from runner.placement import check_device
from runner.registry import CONTAINERS, layer_types

OPTIMIZERS = ("sgd", "adam", "adamw")
LOSSES = ("auto", "cross_entropy", "mse", "l1", "smooth_l1")
DATASETS = ("digits", "synthetic", "file", "text")
TASKS = ("classification", "regression", "reconstruction", "language_model")
DTYPES = ("float32", "float64", "bfloat16")
PROGRESS = ("auto", "bar", "log", "off")
_LAYER_KEYS = ("type", "shared", "repeat", "layers")


@dataclass(frozen=True)
class LayerSpec:
    """One declared layer: a registered type with constructor args, a container, or a shared reuse."""

    name: str
    key: str  # the config key path, for error messages
    type: str | None = None
    args: tuple[tuple[str, Any], ...] = ()
    children: tuple["LayerSpec", ...] = ()
    repeat: int = 1
    shared: str | None = None


@dataclass(frozen=True)
class RunSpec:
    """A fully validated run: typed config groups plus the parsed model tree."""

    layers: tuple[LayerSpec, ...]
    model: Any  # ModelConfig
    init: InitConfig
    data: DataConfig
    optim: OptimConfig
    trainer: TrainerConfig
    seed: int
    config: dict = field(default_factory=dict)  # the resolved config, as plain containers


def to_container(cfg: DictConfig) -> dict:
    """Returns the resolved config as plain dicts and lists, or raises ConfigError naming the bad key."""
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "config"
        raise ConfigError([_omegaconf_problem(key, error)]) from None


def with_schema(cfg: DictConfig | dict) -> DictConfig:
    """Returns the config merged onto the typed schema (a saved or hand-written config gets the same checks)."""
    try:
        return OmegaConf.merge(OmegaConf.structured(RunConfig), cfg)  # type: ignore[return-value]
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "config"
        raise ConfigError([_omegaconf_problem(key, error)]) from None


def _omegaconf_problem(key: str, error: Exception) -> Problem:
    message = str(error).splitlines()[0]
    if "Missing mandatory value" in message:
        message = "a value is required here (it is '???')"
    return Problem(key, message)


def validate(cfg: DictConfig) -> RunSpec:
    """Returns the validated spec for a composed config, or raises ConfigError listing every problem."""
    cfg = with_schema(cfg)
    container = to_container(cfg)
    typed: RunConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    problems = Problems()
    _check_data(typed.data, problems)
    _check_optim(typed.optim, problems)
    _check_trainer(typed.trainer, problems)
    layers = parse_layers(container["model"].get("layers") or {}, "model.layers", problems)
    spec = RunSpec(
        layers=layers,
        model=typed.model,
        init=typed.init,
        data=typed.data,
        optim=typed.optim,
        trainer=typed.trainer,
        seed=typed.seed,
        config=container,
    )
    if not problems:
        # Shapes, ties and init rules need the module tree: check them on the meta device.
        from runner.build import check_on_meta

        check_on_meta(spec, problems)
    problems.raise_if_any()
    return spec


def parse_layers(declared: Any, key: str, problems: Problems) -> tuple[LayerSpec, ...]:
    """Returns the layer specs declared under `key` (a mapping of name -> layer), in order."""
    if not isinstance(declared, dict) or not declared:
        problems.add(key, "expected a non-empty mapping of layer name -> {type: ..., args...}")
        return ()
    return tuple(
        spec
        for name, body in declared.items()
        if (spec := _parse_layer(str(name), body, f"{key}.{name}", problems)) is not None
    )


def _parse_layer(name: str, body: Any, key: str, problems: Problems) -> LayerSpec | None:
    if not name.isidentifier():
        problems.add(key, f"layer name {name!r} must be an identifier (letters, digits, '_'; no dots)")
        return None
    if not isinstance(body, dict):
        problems.add(key, f"expected a mapping like {{type: Linear, in_features: 4, out_features: 8}}, got {body!r}")
        return None
    repeat = body.get("repeat", 1)
    if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
        problems.add(f"{key}.repeat", f"expected a positive integer, got {repeat!r}")
        repeat = 1
    if "shared" in body:
        return _parse_shared(name, body, key, repeat, problems)
    type_name = body.get("type")
    types = layer_types()
    if not isinstance(type_name, str):
        problems.add(f"{key}.type", "missing: every layer needs `type: <layer class>` or `shared: <earlier layer>`")
        return None
    if type_name not in types:
        problems.add(f"{key}.type", f"unknown layer type {type_name!r};{suggest(type_name, types) or ' see the README for the registry'}")
        return None
    if type_name in CONTAINERS:
        children = parse_layers(body.get("layers"), f"{key}.layers", problems)
        extra = sorted(set(body) - set(_LAYER_KEYS))
        for arg in extra:
            problems.add(f"{key}.{arg}", f"{type_name} takes only `layers` and `repeat`")
        return LayerSpec(name, key, type_name, (), children, repeat)
    if "layers" in body:
        problems.add(f"{key}.layers", f"only {' and '.join(CONTAINERS)} have child layers; {type_name} does not")
    args = {k: _plain(v) for k, v in body.items() if k not in _LAYER_KEYS}
    _check_constructor_args(types[type_name], args, key, problems)
    return LayerSpec(name, key, type_name, tuple(args.items()), (), repeat)


def _parse_shared(name: str, body: dict, key: str, repeat: int, problems: Problems) -> LayerSpec | None:
    target = body["shared"]
    extra = sorted(set(body) - {"shared"})
    if extra:
        problems.add(f"{key}.{extra[0]}", "a `shared` layer reuses an earlier module as it is; it takes no other keys")
    if repeat != 1:
        problems.add(f"{key}.repeat", "a `shared` layer cannot repeat")
    if not isinstance(target, str) or not target:
        problems.add(f"{key}.shared", f"expected the dotted path of an earlier layer, got {target!r}")
        return None
    return LayerSpec(name, key, None, shared=target)


def _check_constructor_args(cls: type, args: dict, key: str, problems: Problems) -> None:
    try:
        signature = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return
    params = [p for p in list(signature.parameters.values())[1:] if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    accepted = {p.name for p in params}
    takes_kwargs = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
    for arg in args:
        if arg not in accepted and not takes_kwargs:
            hint = suggest(arg, accepted) or f" {cls.__name__} takes: {', '.join(sorted(accepted)) or 'no arguments'}"
            problems.add(f"{key}.{arg}", f"unexpected argument for {cls.__name__};{hint}")
    for p in params:
        if p.default is p.empty and p.name not in args and p.name not in ("device", "dtype"):
            problems.add(f"{key}.{p.name}", f"missing: {cls.__name__} requires `{p.name}`")
    for arg, value in args.items():
        if isinstance(value, int) and not isinstance(value, bool) and value < 0 and _looks_like_size(arg):
            problems.add(f"{key}.{arg}", f"expected a size >= 0, got {value}")


def _looks_like_size(arg: str) -> bool:
    return arg.endswith(("_features", "_channels", "_size", "_dim", "_embeddings")) or arg in ("d_model", "nhead", "dim", "max_len", "num_embeddings", "embedding_dim")


def _plain(value: Any) -> Any:
    # YAML lists arrive as lists; torch layer constructors want tuples (kernel_size, unflattened_size).
    if isinstance(value, (list, ListConfig)):
        return tuple(_plain(v) for v in value)
    return value


def _check_choice(value: Any, options: tuple[str, ...], key: str, problems: Problems) -> None:
    if value not in options:
        problems.add(key, f"expected one of {', '.join(options)}, got {value!r};{suggest(str(value), options)}".rstrip(";"))


def _check_positive(value: Any, key: str, problems: Problems, allow_zero: bool = False) -> None:
    if value is None:
        return
    if (value < 0) if allow_zero else (value <= 0):
        problems.add(key, f"expected a number {'>= 0' if allow_zero else '> 0'}, got {value}")


def _check_data(data: DataConfig, problems: Problems) -> None:
    _check_choice(data.name, DATASETS, "data.name", problems)
    _check_choice(data.task, TASKS, "data.task", problems)
    _check_positive(data.num_features, "data.num_features", problems)
    _check_positive(data.num_outputs, "data.num_outputs", problems)
    _check_positive(data.num_samples, "data.num_samples", problems)
    if not 0.0 < data.val_fraction < 1.0:
        problems.add("data.val_fraction", f"expected a fraction strictly between 0 and 1, got {data.val_fraction}")
    if data.name == "file":
        if not data.path:
            problems.add("data.path", "required when data.name=file: the path of a .npz, .csv or .pt file")
        elif Path(data.path).suffix not in (".npz", ".csv", ".pt"):
            problems.add("data.path", f"expected a .npz, .csv or .pt file, got {data.path!r}")
        elif not Path(data.path).is_file():
            problems.add("data.path", f"no such file: {data.path}")


def _check_optim(optim: OptimConfig, problems: Problems) -> None:
    _check_choice(optim.name, OPTIMIZERS, "optim.name", problems)
    _check_positive(optim.lr, "optim.lr", problems)
    _check_positive(optim.weight_decay, "optim.weight_decay", problems, allow_zero=True)
    if not 0.0 <= optim.momentum < 1.0:
        problems.add("optim.momentum", f"expected 0 <= momentum < 1, got {optim.momentum}")
    if len(optim.betas) != 2 or not all(0.0 <= b < 1.0 for b in optim.betas):
        problems.add("optim.betas", f"expected two numbers in [0, 1), got {list(optim.betas)}")
    if optim.clip_grad_norm is not None and optim.clip_grad_norm <= 0:
        problems.add("optim.clip_grad_norm", f"expected a number > 0 (or null for no clipping), got {optim.clip_grad_norm}")
    check_scheduler(optim.scheduler, problems)


def _check_trainer(trainer: TrainerConfig, problems: Problems) -> None:
    _check_positive(trainer.epochs, "trainer.epochs", problems)
    _check_positive(trainer.max_steps, "trainer.max_steps", problems, allow_zero=True)
    _check_positive(trainer.batch_size, "trainer.batch_size", problems)
    _check_positive(trainer.log_every, "trainer.log_every", problems)
    _check_positive(trainer.hist_every, "trainer.hist_every", problems, allow_zero=True)
    _check_positive(trainer.threads, "trainer.threads", problems, allow_zero=True)
    _check_positive(trainer.ckpt_every, "trainer.ckpt_every", problems, allow_zero=True)
    _check_positive(trainer.keep_last, "trainer.keep_last", problems)
    _check_choice(trainer.loss, LOSSES, "trainer.loss", problems)
    _check_choice(trainer.dtype, DTYPES, "trainer.dtype", problems)
    _check_choice(trainer.progress, PROGRESS, "trainer.progress", problems)
    _check_choice(trainer.strategy, ("single", "ddp"), "trainer.strategy", problems)
    if trainer.strategy == "ddp" and "WORLD_SIZE" not in os.environ:
        problems.add("trainer.strategy", "ddp needs torchrun: torchrun --nproc_per_node=N -m runner trainer.strategy=ddp")
    check_device(trainer.device, "trainer.device", problems)
