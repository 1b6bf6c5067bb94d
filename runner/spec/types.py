"""The spec's frozen types: every group of a parsed run as read-only, typed values, and the small
pure helpers that read a container's wiring (the build calls them at run time)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from runner.registry.modifiers import MODIFIERS

INPUT = "input"  # in `inputs:` and `output:`, the model's (or the container's) own input


# The groups read straight from the schema (runner/config/schema.py) are its read-only views: the same
# fields, in the same order, with the same defaults. (The schema classes themselves cannot be frozen:
# OmegaConf would make the whole config read-only.)


@dataclass(frozen=True)
class TransformsSpec:
    train: tuple = ()  # items as plain dicts (or names)
    eval: tuple = ()


@dataclass(frozen=True)
class LoaderSpec:
    num_workers: int | str = "auto"
    pin_memory: bool = False
    persistent_workers: bool = False
    prefetch_factor: int | None = None


@dataclass(frozen=True)
class DataSpec:
    name: str = "digits"
    task: str = "classification"
    num_features: int = 64
    num_outputs: int = 10
    shape: tuple[int, ...] | None = None
    val_fraction: float | None = 0.2
    split_seed: int = 0
    num_samples: int = 2000
    noise: float = 0.1
    path: str | None = None
    features_key: str = "features"
    targets_key: str = "targets"
    root: str | None = None
    block_size: int | None = None
    vocab_size: int | None = None
    dtype: str | None = None
    transforms: TransformsSpec = field(default_factory=TransformsSpec)
    loader: LoaderSpec = field(default_factory=LoaderSpec)
    features: tuple[str, ...] | None = None
    target: str | None = None


@dataclass(frozen=True)
class SchedulerSpec:
    name: str = "none"
    step_size: int = 100
    gamma: float = 0.5
    warmup_steps: int = 0
    min_lr: float = 0.0


@dataclass(frozen=True)
class MonitorSpec:
    """trainer.early_stopping: the metric watched at every evaluation, and when to stop."""

    metric: str = "val_loss"
    mode: str = "min"
    patience: int = 3
    min_delta: float = 0.0


@dataclass(frozen=True)
class CallbackSpec:
    """One of trainer.callbacks: a registered callback's name and its constructor's arguments."""

    name: str
    args: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class TrainerSpec:
    epochs: int = 20
    max_steps: int | None = None
    batch_size: int = 64
    accumulate_grad_batches: int = 1
    log_every: int = 50
    grad_stats: bool = True
    hist_every: int = 100
    activation_stats: bool = True
    watch: tuple[str, ...] = ("*",)  # the schema's ["*"], frozen
    tensorboard: bool = True
    plots: bool = True
    ckpt_every: int = 0
    ckpt_every_epochs: int = 1
    keep_last: int = 3
    ema_decay: float | None = None
    early_stopping: MonitorSpec | None = None
    keep_best: bool = False
    device: str = "auto"
    dtype: str = "float32"
    autocast: str | None = None
    deterministic: bool = True
    compile: bool = False
    strategy: str = "single"
    threads: int = 0
    progress: str = "auto"
    callbacks: tuple[CallbackSpec, ...] = ()  # the schema's [], parsed


@dataclass(frozen=True)
class LossSpec:
    """The training loss: a name of the losses table (`auto` resolved to the task's own) and its settings."""

    name: str = "cross_entropy"
    settings: tuple[tuple[str, float], ...] = ()  # (key, value) for each loss.<key> given


@dataclass(frozen=True)
class TrackerSpec:
    name: str = "mlflow"
    uri: str = "sqlite:///mlflow.db"
    experiment: str | None = None


def freeze(value: Any, spec_type: type) -> Any:
    """Returns the schema instance `value` as `spec_type`, its frozen view."""
    return spec_type(**{f.name: getattr(value, f.name) for f in dataclasses.fields(value)})


@dataclass(frozen=True)
class TensorSpec:
    """A tensor the model (or a container) owns itself, registered under `name`."""

    name: str
    key: str
    shape: tuple[int, ...]
    kind: str = "parameter"  # parameter | frozen | buffer
    persistent: bool = True  # buffers only: saved in the state_dict


@dataclass(frozen=True)
class LayerSpec:
    """One declared layer: a registered type with constructor args, a container, or a shared reuse.

    `inputs` None means the previous layer's output (a chain); otherwise the names, in order, of
    earlier layers, tensors of the same container, or `input`. A container with `tensors`, an
    `output` or any child with `inputs` or `call: false` is a graph; without them it is a plain chain.
    `called` False (`call: false`) registers the module without calling it in forward: its tensors
    are the model's (named, counted, saved, initialized) but get no gradient.
    """

    name: str
    key: str  # the config key path, for error messages
    type: str | None = None
    args: tuple[tuple[str, Any], ...] = ()
    children: tuple["LayerSpec", ...] = ()
    repeat: int = 1
    shared: str | None = None
    inputs: tuple[str, ...] | None = None
    tensors: tuple[TensorSpec, ...] = ()
    output: str | None = None
    called: bool = True
    # `repeat` copies with their own settings (`override: {'0': {stride: 2}}`): copy index -> its spec.
    variants: tuple[tuple[int, "LayerSpec"], ...] = ()
    # Built as numbered copies (name.0, name.1, ...): `repeat` was given, even `repeat: 1`, so that a
    # sweep over the count (model.vars.n_layer=1,2) keeps the tensor names (h.0.attn...).
    numbered: bool = False

    @property
    def is_graph(self) -> bool:
        return is_graph(self.children, self.tensors, self.output)

    def copy(self, index: int) -> "LayerSpec":
        """Returns the spec of copy `index` of a repeated layer, one module: its override merged in, if it has one."""
        return dataclasses.replace(dict(self.variants).get(index, self), repeat=1, numbered=False, variants=())


def is_graph(layers: tuple[LayerSpec, ...], tensors: tuple[TensorSpec, ...], output: str | None) -> bool:
    """True when a container's layers are wired by name rather than run as a chain."""
    return bool(tensors) or output is not None or any(layer.inputs is not None or not layer.called for layer in layers)


def wiring(layers: tuple[LayerSpec, ...]) -> list[tuple[LayerSpec, tuple[str, ...] | None]]:
    """Returns each layer with the names it reads: its `inputs`, else the output of the previous
    called layer (the first reads `input`); None for a layer that is not called."""
    wired: list[tuple[LayerSpec, tuple[str, ...] | None]] = []
    previous = INPUT
    for layer in layers:
        if not layer.called:
            wired.append((layer, None))
            continue
        wired.append((layer, layer.inputs if layer.inputs is not None else (previous,)))
        previous = layer.name
    return wired


def output_of(layers: tuple[LayerSpec, ...], output: str | None) -> str:
    """The name of the value a container returns: its `output`, else its last called layer's."""
    if output is not None:
        return output
    return next((layer.name for layer in reversed(layers) if layer.called), INPUT)


def has_uncalled(layers: tuple[LayerSpec, ...]) -> bool:
    """True when some layer, at any depth, is registered but never called (its tensors get no gradient)."""
    return any(not layer.called or has_uncalled(layer.children) for layer in layers)


@dataclass(frozen=True)
class TieSpec:
    """`target` becomes the same tensor as `source`, read with dims `transpose` swapped when given."""

    target: str
    source: str
    transpose: bool | tuple[int, int] = False  # true: a 2-D transpose; [i, j]: swap dims i and j

    @property
    def dims(self) -> tuple[int, int] | None:
        """The two dims swapped, or None for a plain tie."""
        if self.transpose is False:
            return None
        return (0, 1) if self.transpose is True else self.transpose  # type: ignore[return-value]


@dataclass(frozen=True)
class BufferSpec:
    match: str
    persistent: bool = True


@dataclass(frozen=True)
class ModelSpec:
    name: str
    layers: tuple[LayerSpec, ...]
    ties: tuple[TieSpec, ...] = ()
    buffers: tuple[BufferSpec, ...] = ()
    frozen: tuple[str, ...] = ()
    tensors: tuple[TensorSpec, ...] = ()
    output: str | None = None
    eval_modules: tuple[str, ...] = ()

    @property
    def is_graph(self) -> bool:
        return is_graph(self.layers, self.tensors, self.output)

    @property
    def has_uncalled(self) -> bool:
        return has_uncalled(self.layers)


@dataclass(frozen=True)
class Rule:
    """One init rule: which tensors it selects and the function (with arguments) that sets them."""

    index: int
    fn: str
    args: tuple[tuple[str, Any], ...]
    patterns: tuple[str, ...] = ("*",)
    regex: re.Pattern | None = None
    modules: tuple[str, ...] = ()
    kind: str | None = None
    optional: bool = False
    types: tuple[str, ...] = ()  # exact module classes (`type(m) == nn.Linear`), subclasses excluded

    @property
    def label(self) -> str:
        args = ", ".join(f"{k}={list(v) if isinstance(v, tuple) else v}" for k, v in self.args)
        return f"rule[{self.index}] {self.fn}({args})"

    @property
    def modifies(self) -> bool:
        """True for a modifier (add, scale, fill, mask): it changes the value an earlier rule set."""
        return self.fn in MODIFIERS

    @property
    def selector(self) -> str:
        return self.regex.pattern if self.regex else ", ".join(self.patterns)

    def selects(self, name: str, role: str, type_names: set[str], exact_type: str = "") -> bool:
        """True when this rule reaches the tensor called `name` (role: weight | bias | buffer) of a
        module whose classes (subclasses included) are `type_names` and whose own class is `exact_type`."""
        if self.kind is None:
            if role == "buffer":  # buffers are reached only on purpose
                return False
        elif self.kind != "any" and role != self.kind:
            return False
        if self.modules and not set(self.modules) & type_names:
            return False
        if self.types and exact_type not in self.types:
            return False
        if self.regex is not None:
            return self.regex.search(name) is not None
        return any(fnmatchcase(name, pattern) for pattern in self.patterns)


@dataclass(frozen=True)
class InitSpec:
    name: str
    strict: bool
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class GroupSpec:
    """One optimizer parameter group: its tensors (by glob; None = every tensor no other group takes)."""

    index: int
    name: str | None
    patterns: tuple[str, ...] | None
    args: tuple[tuple[str, Any], ...]

    @property
    def label(self) -> str:
        return self.name or f"group{self.index}"


@dataclass(frozen=True)
class OptimSpec:
    name: str
    args: tuple[tuple[str, Any], ...]  # constructor arguments, lr included; absent ones take torch's default
    groups: tuple[GroupSpec, ...]
    no_decay_bias_and_norm: bool
    scheduler: SchedulerSpec
    clip_grad_norm: float | None


@dataclass(frozen=True)
class RunSpec:
    """A parsed run: every group typed and checked on its own terms."""

    model: ModelSpec
    init: InitSpec
    data: DataSpec
    optim: OptimSpec
    trainer: TrainerSpec
    seed: int
    config: dict = field(default_factory=dict)  # the resolved config, as plain containers
    tracker: TrackerSpec | None = None
    metrics: tuple[str, ...] = ()  # evaluation metrics, each logged as val_<name>
    loss: LossSpec = field(default_factory=LossSpec)

