"""Config -> spec: every group parsed once into frozen, typed values, every problem named by its key.

Pure: no tensor is made, no file is read, no environment variable or device is consulted. Names
are checked against the registries that implement them (layer classes, init functions and their
value domains, torch.optim signatures, tasks). What needs the module tree (shapes, which tensor
a glob reaches, ties) is the plan's work (plan.py); what needs this machine is machine.py's.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any, Iterator

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from runner.config.schema import (
    SECTIONS,
    DataConfig,
    InitConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    SchedulerConfig,
    TrackerConfig,
    TrainerConfig,
)
from runner.data.sources import DATASETS
from runner.errors import ConfigError, Problem, Problems, suggest
from runner.registry.init_functions import NONLINEARITIES, argument_problems, init_functions
from runner.registry.layers import Graph
from runner.registry.modifiers import MODIFIERS, modifier_problems
from runner.registry.tables import CONTAINERS, DTYPES, LOSSES, SCHEDULERS, TASKS, TRACKERS, layer_types, optimizer_arguments, optimizers

AUTOCAST = ("bfloat16", "float16")  # trainer.autocast
PROGRESS = ("auto", "bar", "log", "off")
DEVICE_FORM = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_LAYER_KEYS = ("type", "shared", "repeat", "override", "layers", "inputs", "tensors", "output", "call")
_CONTAINER_KEYS = ("type", "repeat", "override", "layers", "inputs", "tensors", "output", "call")
INPUT = "input"  # in `inputs:` and `output:`, the model's (or the container's) own input
TENSOR_KINDS = ("parameter", "frozen", "buffer")
_RULE_SELECTORS = ("match", "regex", "module", "type", "kind", "fn", "optional")
KINDS = ("weight", "bias", "buffer", "any")


def _frozen(schema: type) -> type:
    """Returns a frozen dataclass with the schema's fields: the spec's read-only view of a group.

    (The schema classes themselves cannot be frozen: OmegaConf would make the whole config read-only.)
    """
    fields = [(f.name, f.type) for f in dataclasses.fields(schema)]
    frozen = dataclasses.make_dataclass(schema.__name__.replace("Config", "Spec"), fields, frozen=True)
    frozen.__module__ = __name__
    return frozen


DataSpec = _frozen(DataConfig)
TrainerSpec = _frozen(TrainerConfig)
TrackerSpec = _frozen(TrackerConfig)
SchedulerSpec = _frozen(SchedulerConfig)


def _freeze(value: Any, spec_type: type) -> Any:
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
    scheduler: SchedulerSpec  # type: ignore[valid-type]
    clip_grad_norm: float | None


@dataclass(frozen=True)
class RunSpec:
    """A parsed run: every group typed and checked on its own terms."""

    model: ModelSpec
    init: InitSpec
    data: DataSpec  # type: ignore[valid-type]
    optim: OptimSpec
    trainer: TrainerSpec  # type: ignore[valid-type]
    seed: int
    config: dict = field(default_factory=dict)  # the resolved config, as plain containers
    tracker: TrackerSpec | None = None  # type: ignore[valid-type]


# ---------------------------------------------------------------- entry point


def parse(cfg: DictConfig | dict, problems: Problems) -> RunSpec:
    """Returns the spec of a composed (or saved) config, adding every problem found to `problems`.

    Raises ConfigError at once only when the config cannot be read against the schema at all (a
    section that is not a mapping, a wrong type for a typed key, a required key left out); every
    other problem leaves a spec for the plan to check further.
    """
    container = to_container(cfg)
    referenced = _referenced_vars(cfg) if isinstance(cfg, DictConfig) else None
    wrong = [Problem(name, f"expected a mapping of {name} settings, got {_at(container, name, None)!r}")
             for name in SECTIONS if name and not isinstance(_at(container, name, {}), dict)
             and not (name in OPTIONAL_SECTIONS and _at(container, name, {}) is None)]
    if wrong:  # nothing inside can be read
        raise ConfigError(wrong)
    optim_extras = _check_unknown_keys(container, problems)
    _check_vars(container["model"], referenced, problems)
    _check_booleans(container, problems)
    try:
        typed: RunConfig = OmegaConf.to_object(with_schema(container))  # type: ignore[assignment]
    except OmegaConfBaseException as error:  # a required key left out (model.name: ???)
        raise ConfigError([*problems.items, _omegaconf_problem(getattr(error, "full_key", None) or "config", error)]) from None
    container["optim"].update(optim_extras)
    data, trainer = _freeze(typed.data, DataSpec), _freeze(typed.trainer, TrainerSpec)
    trainer = dataclasses.replace(trainer, watch=_parse_globs(list(trainer.watch), "trainer.watch", problems),
                                  early_stopping=parse_monitor(trainer.early_stopping, data.task, problems))
    _check_data(data, problems)
    _check_trainer(trainer, problems)
    return RunSpec(
        model=_parse_model(container["model"], problems),
        init=InitSpec(typed.init.name, bool(typed.init.strict), parse_rules(list(container["init"]["rules"]), problems)),
        data=data,
        optim=_parse_optim(container["optim"], _freeze(typed.optim.scheduler, SchedulerSpec), problems),
        trainer=trainer,
        seed=typed.seed,
        config=container,
        tracker=_parse_tracker(typed.tracker, problems),
    )


_VAR_REFERENCE = re.compile(r"\$\{[^{}]*?\bmodel\.vars\.([A-Za-z_]\w*)")


def _referenced_vars(cfg: DictConfig) -> set[str]:
    """Returns the names of the model variables some interpolation of the (unresolved) config reads."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str):
            found.update(_VAR_REFERENCE.findall(node))

    walk({k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k != "hydra"})  # type: ignore[union-attr]
    return found


def _check_vars(model: Any, referenced: set[str] | None, problems: Problems) -> None:
    """Checks model.vars and removes it: its values now live where they are used, so the saved
    config holds the numbers themselves (a resumed run's model is the saved one)."""
    if not isinstance(model, dict):
        return
    declared = model.pop("vars", None) or {}
    if not isinstance(declared, dict):
        problems.add("model.vars", f"expected a mapping of name -> value (n_embd: 64), got {declared!r}")
        return
    for name, value in declared.items():
        key = f"model.vars.{name}"
        if not str(name).isidentifier():
            problems.add(key, f"a variable name must be an identifier (letters, digits, '_'), got {name!r}")
        elif isinstance(value, (dict, list)):
            problems.add(key, f"expected a number, string or boolean, got {value!r}")
        elif referenced is not None and name not in referenced:
            problems.add(key, f"no key of the config reads it (use it as ${{model.vars.{name}}}); "
                              "a variable nothing reads would change nothing")


def _at(container: dict, dotted: str, default: Any) -> Any:
    node: Any = container
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def to_container(cfg: DictConfig | dict) -> dict:
    """Returns the resolved config as plain dicts and lists, or raises ConfigError naming the bad key."""
    if isinstance(cfg, dict):
        return copy.deepcopy(cfg)
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


# ---------------------------------------------------------------- schema-level checks

OPTIONAL_SECTIONS = ("tracker",)  # null when not used


def _names(schema: type) -> list[str]:
    return [f.name for f in dataclasses.fields(schema)]


def _check_unknown_keys(container: dict, problems: Problems) -> dict:
    """Removes and reports every key the schema does not have (Hydra's `+key=` adds keys past struct
    mode); returns the optimizer's extra keys, which are constructor arguments checked later."""
    extras: dict = {}
    for name, schema in SECTIONS.items():
        node = _at(container, name, None) if name else container
        if not isinstance(node, dict):
            continue
        known = _names(schema)
        for key in [k for k in node if k not in known]:
            if schema is OptimConfig:
                extras[key] = node.pop(key)
                continue
            problems.add(f"{name}.{key}" if name else str(key), f"unknown key;{suggest(str(key), known) or ' it takes: ' + ', '.join(known)}")
            del node[key]
    return extras


def _booleans() -> set[str]:
    """Returns the dotted paths of the schema's boolean fields (marked by config.flag)."""
    return {f"{section}.{f.name}" for section, schema in SECTIONS.items() if section
            for f in dataclasses.fields(schema) if f.metadata.get("flag")}


def _check_booleans(container: dict, problems: Problems) -> None:
    for path in sorted(_booleans()):
        group, key = path.split(".")
        value = container.get(group, {}).get(key)
        if key in container.get(group, {}) and not isinstance(value, bool):
            problems.add(path, f"expected true or false, got {value!r}")
            container[group].pop(key)


# ---------------------------------------------------------------- model


def _parse_model(model: dict, problems: Problems) -> ModelSpec:
    tensors = parse_tensors(model.get("tensors") or {}, "model.tensors", problems)
    layers = parse_layers(model.get("layers") or {}, "model.layers", problems)
    output = _parse_output(model.get("output"), "model.output", problems)
    check_graph(layers, tensors, output, "model", problems)
    if not any(p.key.startswith("model.layers") for p in problems.items):
        _InPlace(layers, problems).check(layers, tensors, output, residual=False, top=True)
    return ModelSpec(
        name=str(model.get("name")),
        layers=layers,
        ties=_parse_ties(model.get("ties") or [], problems),
        buffers=_parse_buffers(model.get("buffers") or [], problems),
        frozen=_parse_globs(model.get("frozen") or [], "model.frozen", problems),
        tensors=tensors,
        output=output,
        eval_modules=_parse_globs(model.get("eval_modules") or [], "model.eval_modules", problems),
    )


def parse_layers(declared: Any, key: str, problems: Problems) -> tuple[LayerSpec, ...]:
    """Returns the layer specs declared under `key` (a mapping of name -> layer), in order."""
    if not isinstance(declared, dict) or not declared:
        problems.add(key, "expected a non-empty mapping of layer name -> {type: ..., args...}")
        return ()
    specs = []
    for name, body in declared.items():
        if isinstance(name, int) and not isinstance(name, bool) and str(name) in declared:
            # YAML's `0:` is a number; an override such as model.layers.0.stride=2 adds the text '0' beside it.
            problems.add(f"{key}.{name}", f"layer {name} is given both as the number {name} and as the text '{name}' (a command-line "
                                          f"override names the text): quote the key in the YAML file ('{name}': ...)")
        elif (spec := _parse_layer(str(name), body, f"{key}.{name}", problems)) is not None:
            specs.append(spec)
    return tuple(specs)


def layer_name_ok(name: str) -> bool:
    """True for an identifier or a non-negative integer written plainly ('0', '12'): torchvision's and
    Hugging Face's numbered children (`layer1.0.conv1`) are names too."""
    return name.isidentifier() or (name.isdigit() and str(int(name)) == name)


def _parse_layer(name: str, body: Any, key: str, problems: Problems) -> LayerSpec | None:
    if not layer_name_ok(name):
        problems.add(key, f"layer name {name!r} must be an identifier (letters, digits, '_'; no dots) or a number such as '0'")
        return None
    if name == INPUT:
        problems.add(key, f"{INPUT!r} is reserved: in `inputs:` it names the model's (or the container's) input")
        return None
    if name in _module_attributes():
        problems.add(key, f"layer name {name!r} is an attribute of every module (torch.nn.Module.{name}); pick another name")
        return None
    if not isinstance(body, dict):
        problems.add(key, f"expected a mapping like {{type: Linear, in_features: 4, out_features: 8}}, got {body!r}")
        return None
    if "override" in body and "shared" not in body:
        return _parse_overrides(name, body, key, problems)
    repeat = body.get("repeat", 1)
    if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
        problems.add(f"{key}.repeat", f"expected a positive integer, got {repeat!r}")
        repeat = 1
    inputs = _parse_inputs(body.get("inputs"), f"{key}.inputs", problems)
    if repeat > 1 and inputs is not None and len(inputs) > 1:
        problems.add(f"{key}.repeat", f"a repeated layer passes one value from copy to copy; it cannot take {len(inputs)} inputs")
    called = _parse_call(body, key, inputs, problems)
    if "shared" in body:
        return _parse_shared(name, body, key, repeat, inputs, problems)

    type_name = body.get("type")
    types = layer_types()
    if not isinstance(type_name, str):
        problems.add(f"{key}.type", "missing: every layer needs `type: <layer class>` or `shared: <earlier layer>`")
        return None
    if type_name not in types:
        hint = suggest(type_name, types) or " see docs/config.md for the registry; a class of your own needs runner.register_layer or a `runner.layers` entry point"
        problems.add(f"{key}.type", f"unknown layer type {type_name!r};{hint}")
        return None
    if type_name in CONTAINERS:
        for arg in sorted(set(body) - set(_CONTAINER_KEYS)):
            problems.add(f"{key}.{arg}", f"{type_name} takes only {', '.join(f'`{k}`' for k in _CONTAINER_KEYS[1:])}")
        if inputs is not None and len(inputs) != 1:
            problems.add(f"{key}.inputs", f"a container takes one input, got {len(inputs)}")
        tensors = parse_tensors(body.get("tensors") or {}, f"{key}.tensors", problems)
        children = parse_layers(body.get("layers"), f"{key}.layers", problems)
        output = _parse_output(body.get("output"), f"{key}.output", problems)
        check_graph(children, tensors, output, key, problems)
        return LayerSpec(name, key, type_name, (), children, repeat, None, inputs, tensors, output, called, numbered="repeat" in body)
    for arg in ("layers", "tensors", "output"):
        if arg in body:
            problems.add(f"{key}.{arg}", f"only the containers {' and '.join(CONTAINERS)} have `{arg}`; {type_name} does not")
    args = {k: _plain(v) for k, v in body.items() if k not in _LAYER_KEYS}
    _check_constructor_args(types[type_name], args, key, problems)
    return LayerSpec(name, key, type_name, tuple(args.items()), (), repeat, None, inputs, called=called, numbered="repeat" in body)


def _parse_overrides(name: str, body: dict, key: str, problems: Problems) -> LayerSpec | None:
    """A repeated layer whose copies differ: `override` maps a copy's index to settings merged into
    that copy's body (the first block of a ResNet stage downsamples: {'0': {layers: {conv1: {stride: 2}}}})."""
    declared = body["override"]
    base_body = {k: v for k, v in body.items() if k != "override"}
    base = _parse_layer(name, base_body, key, problems)
    if base is None:
        return None
    repeat = base.repeat
    if not base.numbered:
        problems.add(f"{key}.override", "only a repeated layer (repeat: N) has copies to override")
        return base
    if not isinstance(declared, dict) or not declared:
        problems.add(f"{key}.override", f"expected a mapping of copy index -> settings, such as {{'0': {{stride: 2}}}}, got {declared!r}")
        return base
    variants: dict[int, LayerSpec] = {}
    for index, settings in declared.items():
        where = f"{key}.override.{index}"
        number = int(index) if isinstance(index, int) or (isinstance(index, str) and index.isdigit()) else None
        if isinstance(index, bool) or number is None or not 0 <= number < repeat:
            problems.add(where, f"expected a copy index from 0 to {repeat - 1}, got {index!r}")
            continue
        if number in variants:
            problems.add(where, f"copy {number} is overridden twice")
            continue
        if not isinstance(settings, dict):
            problems.add(where, f"expected a mapping of settings merged into copy {number}, got {settings!r}")
            continue
        fixed = sorted(set(settings) & {"repeat", "override", "inputs", "call", "shared"})
        for setting in fixed:
            problems.add(f"{where}.{setting}", f"`{setting}` is the repeated layer's own; a copy can change its type, arguments and layers")
        if fixed:
            continue
        found = Problems()
        variant = _parse_layer(name, _merged(base_body, settings), where, found)
        ours = {(p.key, p.message) for p in problems.items}
        for problem in found.items:  # what the base already reported is not reported again per copy
            if (problem.key.replace(where, key, 1), problem.message) not in ours:
                problems.add(problem.key, problem.message)
        if variant is not None:
            variants[number] = variant
    return dataclasses.replace(base, variants=tuple(sorted(variants.items())))


def _merged(base: dict, settings: dict) -> dict:
    """Returns `base` with `settings` merged in: mappings key by key, any other value replaced."""
    merged = dict(base)
    for k, v in settings.items():
        merged[k] = _merged(merged[k], v) if isinstance(merged.get(k), dict) and isinstance(v, dict) else v
    return merged


def _parse_call(body: dict, key: str, inputs: tuple[str, ...] | None, problems: Problems) -> bool:
    """`call: false`: the layer is registered (its tensors are the model's) but forward never calls it."""
    called = body.get("call", True)
    if not isinstance(called, bool):
        problems.add(f"{key}.call", f"expected true or false, got {called!r}")
        return True
    if not called and inputs is not None:
        problems.add(f"{key}.inputs", "a layer with `call: false` is never called, so it reads nothing; drop `inputs`")
    if not called and "shared" in body:
        problems.add(f"{key}.call", "a `shared` layer is another call of an earlier module; with `call: false` it would be nothing")
    return called


@lru_cache(maxsize=1)
def _module_attributes() -> frozenset[str]:
    """Names a layer or tensor cannot take: registering it would clash with the module's own attribute."""
    return frozenset(name for name in dir(Graph("x")) if not name.startswith("__"))


def _parse_inputs(declared: Any, key: str, problems: Problems) -> tuple[str, ...] | None:
    if declared is None:
        return None
    if isinstance(declared, (str, int)) and not isinstance(declared, bool):
        declared = [declared]
    if isinstance(declared, list):  # a numbered layer read as `inputs: [0]`
        declared = [str(n) if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else n for n in declared]
    if not isinstance(declared, list) or not declared or not all(isinstance(n, str) and n for n in declared):
        problems.add(key, f"expected a non-empty list of names (earlier layers, tensors, or `input`), got {declared!r}")
        return None
    return tuple(declared)


def _parse_output(declared: Any, key: str, problems: Problems) -> str | None:
    if isinstance(declared, int) and not isinstance(declared, bool) and declared >= 0:
        declared = str(declared)  # a numbered layer
    if declared is not None and (not isinstance(declared, str) or not declared):
        problems.add(key, f"expected the name of a layer or tensor, got {declared!r}")
        return None
    return declared


def parse_tensors(declared: Any, key: str, problems: Problems) -> tuple[TensorSpec, ...]:
    """Returns the tensors declared under `key`: name -> {shape: [...], kind: ..., persistent: ...}."""
    if not isinstance(declared, dict):
        problems.add(key, f"expected a mapping of tensor name -> {{shape: [1], kind: parameter}}, got {declared!r}")
        return ()
    tensors = []
    for name, body in declared.items():
        where = f"{key}.{name}"
        name = str(name)
        if not name.isidentifier() or name == INPUT:
            problems.add(where, f"tensor name {name!r} must be an identifier other than {INPUT!r}")
            continue
        if name in _module_attributes():
            problems.add(where, f"tensor name {name!r} is an attribute of every module (torch.nn.Module.{name}); pick another name")
            continue
        if not isinstance(body, dict):
            problems.add(where, f"expected a mapping like {{shape: [1, 16], kind: parameter}}, got {body!r}")
            continue
        for extra in sorted(set(body) - {"shape", "kind", "persistent"}):
            problems.add(f"{where}.{extra}", f"unknown key;{suggest(str(extra), ['shape', 'kind', 'persistent']) or ' a tensor takes shape, kind, persistent'}")
        shape = body.get("shape")
        if isinstance(shape, int) and not isinstance(shape, bool):
            shape = [shape]
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
            problems.add(f"{where}.shape", f"expected a list of sizes >= 1 (e.g. [1, 65, 32]), got {shape!r}")
            continue
        kind = body.get("kind", "parameter")
        if kind not in TENSOR_KINDS:
            problems.add(f"{where}.kind", f"expected one of {', '.join(TENSOR_KINDS)}, got {kind!r};{suggest(str(kind), TENSOR_KINDS)}".rstrip(";"))
            continue
        persistent = body.get("persistent", True)
        if not isinstance(persistent, bool):
            problems.add(f"{where}.persistent", f"expected true or false, got {persistent!r}")
        elif "persistent" in body and kind != "buffer":
            problems.add(f"{where}.persistent", f"only buffers can be left out of the state_dict; this tensor is a {kind}")
        tensors.append(TensorSpec(name, where, tuple(shape), kind, persistent is not False))
    return tuple(tensors)


def check_graph(layers: tuple[LayerSpec, ...], tensors: tuple[TensorSpec, ...], output: str | None, key: str, problems: Problems) -> None:
    """Checks the wiring of one container (or the model): every input names `input`, an earlier layer
    or a tensor of this container; nothing is read before it is made (so there is no cycle); every
    layer and tensor is read by something or is the output."""
    where = "model.layers" if key == "model" else f"{key}.layers"
    names = [layer.name for layer in layers]
    tensor_names = {t.name: t for t in tensors}
    for clash in sorted(set(names) & set(tensor_names)):
        problems.add(f"{key}.tensors.{clash}", f"{clash!r} names both a layer and a tensor")
    position = {name: index for index, name in enumerate(names)}
    uncalled = {layer.name for layer in layers if not layer.called}
    if layers and len(uncalled) == len(layers):
        problems.add(where, "every layer here has `call: false`; at least one must compute the output")
    read: set[str] = set(uncalled)  # kept without being read, by declaration
    for index, (layer, reads) in enumerate(wiring(layers)):
        if reads is None:
            continue
        if layer.inputs is None:
            read.update(reads)
            continue
        for slot, name in enumerate(layer.inputs):
            at = f"{layer.key}.inputs[{slot}]"
            read.add(name)
            if name == INPUT or name in tensor_names:
                continue
            if name in uncalled:
                problems.add(at, f"{name!r} has `call: false`: it is never called, so it has no output to read")
            elif name == layer.name:
                problems.add(at, f"{layer.name!r} cannot read its own output (that would be a cycle)")
            elif name in position and position[name] > index:
                problems.add(at, f"{name!r} is declared after {layer.name!r}; a layer reads only layers declared before it (so the graph has no cycle)")
            elif name not in position:
                known = [INPUT, *names[:index], *tensor_names]
                problems.add(at, f"no layer or tensor {name!r} here;{suggest(name, known) or ' it can read: ' + ', '.join(known)}")
    if output is not None and output != INPUT and output not in position and output not in tensor_names:
        known = [*names, *tensor_names]
        problems.add(f"{key}.output", f"no layer or tensor {output!r};{suggest(output, known) or ' it can name: ' + ', '.join(known)}")
    elif output in uncalled:
        problems.add(f"{key}.output", f"{output!r} has `call: false`: it is never called, so it has no output")
    result = output_of(layers, output)
    read.add(result)
    for layer in layers:
        if layer.name not in read:
            problems.add(layer.key, f"nothing reads the output of {layer.name!r} and it is not the output ({key}.output: {result})")
    for tensor in tensors:
        if tensor.name not in read and tensor.kind != "buffer":
            problems.add(tensor.key, f"nothing reads {tensor.name!r}: name it in some layer's `inputs` (only a buffer may be kept without being read)")


# Layers whose output may be their input itself or a view of it (Dropout is the identity in eval
# mode): an in-place layer after one of them overwrites the value it was given.
_VIEWS = frozenset({"Identity", "Flatten", "Unflatten", "Permute", "Select", "Slice", "TokensToRows", "Dropout", "Dropout1d",
                    "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout", "Detach", "Item", "SplitHeads", "MergeHeads"})
_MERGES = frozenset({"Add", "Mul"})  # with one input, the input itself
# Layers whose backward reads their own output: overwriting it stops the first backward.
_SAVES_OUTPUT = frozenset({"ReLU", "Sigmoid", "Tanh", "Softmax", "LogSoftmax"})


class _InPlace:
    """Which values a model's layers overwrite in place, and who else reads them.

    An in-place layer (`inplace: true`, also inside a container, a copy or a `shared` reuse) must be
    the only reader of the value it overwrites and of every view of it: another reader, the
    container's output, a residual sum or, at the top, the batch (a slice of the dataset) would
    silently see the overwritten values.
    """

    def __init__(self, layers: tuple[LayerSpec, ...], problems: Problems):
        self.problems = problems
        self.by_path: dict[str, LayerSpec] = {}
        self._index(layers, "")

    def _index(self, layers: tuple[LayerSpec, ...], prefix: str) -> None:
        for layer in layers:
            path = prefix + layer.name
            self.by_path[path] = layer
            if layer.numbered:
                for index in range(layer.repeat):
                    copy = layer.copy(index)
                    self.by_path[f"{path}.{index}"] = copy
                    self._index(copy.children, f"{path}.{index}.")
            else:
                self._index(layer.children, f"{path}.")

    def _module(self, layer: LayerSpec) -> LayerSpec | None:
        """The layer a `shared` reuse calls (None when its path names nothing: the build reports that)."""
        seen = set()
        while layer.shared is not None and layer.shared not in seen:
            seen.add(layer.shared)
            target = self.by_path.get(layer.shared)
            if target is None:
                return None
            layer = target
        return layer

    def overwrites(self, layer: LayerSpec) -> bool:
        """True when calling the layer overwrites the one value it reads."""
        module = self._module(layer)
        if module is None or not layer.called:
            return False
        if module.numbered:  # copy i overwrites the input when every copy before it passed the input on
            for index in range(module.repeat):
                copy = module.copy(index)
                if self.overwrites(copy):
                    return True
                if not self.passes_on(copy, (INPUT,)):
                    return False
            return False
        if module.children:
            roots = self._roots(module.children)
            return any(len(reads) == 1 and roots.get(reads[0]) == INPUT and self.overwrites(child)
                       for child, reads in wiring(module.children) if reads is not None)
        return dict(module.args).get("inplace") is True

    def passes_on(self, layer: LayerSpec, reads: tuple[str, ...]) -> bool:
        """True when the layer's output may be the value it read itself, or a view of it."""
        module = self._module(layer)
        if module is None or len(reads) != 1 or self.overwrites(layer):  # what it returns is new values, meant for its readers
            return False
        if module.numbered:
            return all(self.passes_on(module.copy(i), reads) for i in range(module.repeat))
        if module.children:
            return module.type != "Residual" and self._roots(module.children).get(output_of(module.children, module.output)) == INPUT
        return module.type in _VIEWS or module.type in _MERGES

    def _roots(self, layers: tuple[LayerSpec, ...]) -> dict[str, str]:
        """Returns value name -> the value whose storage it shares (itself unless passed on; one element
        of a tuple, `Item`, is a storage of its own)."""
        roots = {INPUT: INPUT}
        for layer, reads in wiring(layers):
            if reads is None:
                continue
            source = roots.get(reads[0], reads[0])
            if self.passes_on(layer, reads):
                module = self._module(layer)
                roots[layer.name] = f"{source}[{dict(module.args).get('index')}]" if module is not None and module.type == "Item" else source
            else:
                roots[layer.name] = layer.name
        return roots

    def check(self, layers: tuple[LayerSpec, ...], tensors: tuple[TensorSpec, ...], output: str | None, residual: bool, top: bool) -> None:
        """Checks one container (or the model), then every container inside it."""
        roots = {**self._roots(layers), **{t.name: t.name for t in tensors}}
        readers: dict[str, list[str]] = {}  # storage -> who reads it (what passes a value on copies nothing)
        overwriting: list[tuple[LayerSpec, str]] = []
        for layer, reads in wiring(layers):
            if reads is None:
                continue
            if not self.passes_on(layer, reads):
                for name in reads:
                    readers.setdefault(roots.get(name, name), []).append(f"layer {layer.name!r}")
            if len(reads) == 1 and self.overwrites(layer):
                overwriting.append((layer, reads[0]))
        result = output_of(layers, output)
        readers.setdefault(roots.get(result, result), []).append(f"the output ({result!r})")
        if residual:
            readers.setdefault(INPUT, []).append("the residual sum (input + output)")
        if top:
            readers.setdefault(INPUT, []).append("the training loop (the batch is a slice of the dataset, which would change)")
        producers = {other.name: self._module(other) for other in layers}
        for layer, value in overwriting:
            storage = roots.get(value, value)
            producer = producers.get(storage)
            if producer is not None and not producer.numbered and producer.type in _SAVES_OUTPUT:
                self.problems.add(f"{layer.key}.inplace" if dict(layer.args).get("inplace") is True else layer.key,
                                  f"{layer.name!r} overwrites the output of {storage!r} ({producer.type}) in place, but {producer.type}'s "
                                  f"backward reads its own output: the first backward would stop; set inplace: false")
                continue
            others = [r for r in readers.get(storage, []) if r != f"layer {layer.name!r}"]
            if storage in {t.name for t in tensors}:
                others.insert(0, f"the tensor {storage!r} itself")
            if others:
                what = repr(value) if storage == value else f"{value!r} (a view of {storage!r})"
                how = ("" if dict(layer.args).get("inplace") is True and not layer.variants
                       else f" (it reuses {layer.shared!r})" if layer.shared is not None
                       else " (a layer inside it does)" if layer.children else " (one of its copies does)")
                self.problems.add(f"{layer.key}.inplace" if dict(layer.args).get("inplace") is True else layer.key,
                                  f"{layer.name!r} overwrites {what} in place{how}, but {others[0]} also reads it and would see "
                                  f"the overwritten values; set inplace: false (or give {layer.name!r} a value no one else reads)")
        for layer in layers:
            for copy in ([layer, *(v for _, v in layer.variants)] if layer.children else []):
                self.check(copy.children, copy.tensors, copy.output, copy.type == "Residual", top=False)


def _parse_shared(name: str, body: dict, key: str, repeat: int, inputs: tuple[str, ...] | None, problems: Problems) -> LayerSpec | None:
    target = body["shared"]
    extra = sorted(set(body) - {"shared", "inputs", "call"})
    if extra:
        problems.add(f"{key}.{extra[0]}", "a `shared` layer reuses an earlier module as it is; it takes only `inputs`")
    if repeat != 1:
        problems.add(f"{key}.repeat", "a `shared` layer cannot repeat")
    if not isinstance(target, str) or not target:
        problems.add(f"{key}.shared", f"expected the dotted path of an earlier layer, got {target!r}")
        return None
    return LayerSpec(name, key, None, shared=target, inputs=inputs)


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
    hints = _type_hints(cls)
    by_name = {p.name: p for p in params}
    for arg, value in args.items():
        if isinstance(value, int) and not isinstance(value, bool) and value < 0 and _looks_like_size(arg):
            problems.add(f"{key}.{arg}", f"expected a size >= 0, got {value}")
        elif arg in by_name:
            expected = _type_problem(value, hints.get(arg, by_name[arg].annotation), by_name[arg].default)
            if expected:
                problems.add(f"{key}.{arg}", f"expected {expected} ({cls.__name__}'s `{arg}`), got {value!r}")


def _type_hints(cls: type) -> dict[str, Any]:
    """Returns the constructor's annotations resolved to types ({} where they cannot be resolved)."""
    try:
        return typing.get_type_hints(cls.__init__)
    except Exception:  # an annotation naming what its module does not import: fall back to the raw one
        return {}


_SIMPLE = {bool: "bool", int: "int", float: "float", str: "str", type(None): "none"}


def _kinds(annotation: Any) -> set[str] | None:
    """Returns the kinds of value an annotation admits (bool, int, float, str, none, sequence, or a
    Literal's options as 'literal:<repr>'), or None when it admits something this check cannot judge."""
    if isinstance(annotation, str):  # an unresolved `from __future__` annotation: read the plain names
        names = {part.strip() for part in annotation.replace("Optional[", "").rstrip("]").split("|")}
        simple = {"bool": "bool", "int": "int", "float": "float", "str": "str", "None": "none"}
        return {simple[n] for n in names} if names <= set(simple) else None
    if annotation in _SIMPLE:
        return {_SIMPLE[annotation]}
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        kinds: set[str] = set()
        for member in typing.get_args(annotation):
            inner = _kinds(member)
            if inner is None:
                return None
            kinds |= inner
        return kinds
    if origin is typing.Literal:
        return {f"literal:{option!r}" for option in typing.get_args(annotation)}
    if annotation in (tuple, list) or origin in (tuple, list) or annotation is getattr(__import__("torch"), "Size", None):
        return {"sequence"}
    return None


def _type_problem(value: Any, annotation: Any, default: Any) -> str | None:
    """Returns what a constructor argument expects when `value` is not of it, else None: a string where a
    bool belongs (Hydra reads `bias=no` as the text 'no') must not build a layer with a bias."""
    kinds = _kinds(annotation) if annotation is not inspect.Parameter.empty else None
    if kinds is None:  # unannotated: judge by the default's type alone
        if isinstance(default, bool):
            kinds = {"bool"}
        elif isinstance(default, (int, float)):
            kinds = {"int", "float"} if isinstance(default, float) else {"int", "float", "bool"} if default in (0, 1) else {"int", "float"}
        else:
            return None
    if default is None:
        kinds = kinds | {"none"}
    if value is None:
        ok = "none" in kinds
    elif isinstance(value, bool):
        ok = "bool" in kinds
    elif isinstance(value, int):
        ok = bool({"int", "float"} & kinds)
    elif isinstance(value, float):
        ok = "float" in kinds
    elif isinstance(value, str):
        ok = "str" in kinds or f"literal:{value!r}" in kinds
    elif isinstance(value, tuple):
        ok = "sequence" in kinds
    else:
        return None
    if ok:
        return None
    words = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string", "none": "null",
             "sequence": "a list"}
    described = [words[k] for k in ("bool", "int", "float", "str", "sequence", "none") if k in kinds]
    if "int" in kinds and "float" in kinds:
        described.remove("an integer")
    described += [k.removeprefix("literal:") for k in sorted(kinds) if k.startswith("literal:")]
    return " or ".join(described)


def _looks_like_size(arg: str) -> bool:
    # Not `dim`: in torch.nn it is an axis (Softmax, Unflatten, the project's Concat, Select, Slice), often -1.
    return arg.endswith(("_features", "_channels", "_size", "_dim", "_embeddings")) or arg in ("d_model", "nhead", "max_len", "num_embeddings", "embedding_dim")


def _plain(value: Any) -> Any:
    # YAML lists arrive as lists; torch layer constructors want tuples (kernel_size, unflattened_size).
    if isinstance(value, (list, ListConfig)):
        return tuple(_plain(v) for v in value)
    return value


def _parse_ties(declared: list, problems: Problems) -> tuple[TieSpec, ...]:
    ties = []
    for index, entry in enumerate(declared):
        key = f"model.ties[{index}]"
        if not isinstance(entry, dict) or not {"target", "source"} <= set(entry):
            problems.add(key, "expected {target: <tensor name>, source: <tensor name>, transpose: false | true | [i, j]}")
            continue
        for name in sorted(set(entry) - {"target", "source", "transpose"}):
            problems.add(f"{key}.{name}", f"unknown key;{suggest(name, ['target', 'source', 'transpose']) or ' a tie takes target, source, transpose'}")
        transpose = entry.get("transpose", False)
        if isinstance(transpose, list) and len(transpose) == 2 and all(isinstance(d, int) and not isinstance(d, bool) for d in transpose) and transpose[0] != transpose[1]:
            transpose = (transpose[0], transpose[1])
        elif not isinstance(transpose, bool):
            problems.add(f"{key}.transpose", f"expected true (a 2-D transpose), false, or two different dims to swap such as [2, 3]; got {transpose!r}")
            transpose = False
        ties.append(TieSpec(str(entry["target"]), str(entry["source"]), transpose))
    return tuple(ties)


def _parse_buffers(declared: list, problems: Problems) -> tuple[BufferSpec, ...]:
    buffers = []
    for index, entry in enumerate(declared):
        key = f"model.buffers[{index}]"
        if isinstance(entry, str):
            entry = {"match": entry}
        if not isinstance(entry, dict) or "match" not in entry or set(entry) - {"match", "persistent"}:
            problems.add(key, "expected {match: <glob>, persistent: true}")
            continue
        persistent = entry.get("persistent", True)
        if not isinstance(persistent, bool):
            problems.add(f"{key}.persistent", f"expected true or false, got {persistent!r}")
        buffers.append(BufferSpec(str(entry["match"]), persistent is not False))
    return tuple(buffers)


def _parse_globs(declared: list, key: str, problems: Problems) -> tuple[str, ...]:
    globs = []
    for index, pattern in enumerate(declared):
        if not isinstance(pattern, str) or not pattern:
            problems.add(f"{key}[{index}]", f"expected a glob such as 'encoder.*', got {pattern!r}")
            continue
        globs.append(pattern)
    return tuple(globs)


def _mappings(declared: list, key: str, example: str, problems: Problems) -> Iterator[tuple[int, str, dict]]:
    """Yields (index, key path, entry) for each mapping of a declared list; adds a problem for the rest."""
    for index, body in enumerate(declared):
        if isinstance(body, dict):
            yield index, f"{key}[{index}]", body
        else:
            problems.add(f"{key}[{index}]", f"expected a mapping like {example}, got {body!r}")


# ---------------------------------------------------------------- init rules


def parse_rules(declared: list[Any], problems: Problems) -> tuple[Rule, ...]:
    """Returns the rules declared under init.rules, each checked for a known function and valid arguments."""
    functions = [*init_functions(), *MODIFIERS]
    rules = []
    for index, key, body in _mappings(declared, "init.rules", "{match: '*.weight', fn: xavier_uniform_}", problems):
        fn = body.get("fn")
        if not isinstance(fn, str):
            problems.add(f"{key}.fn", f"missing: name an init function ({', '.join(sorted(functions))})")
            continue
        if fn not in functions:
            problems.add(f"{key}.fn", f"unknown init function {fn!r};{suggest(fn, functions) or ' available: ' + ', '.join(sorted(functions))}")
            continue
        args = {k: v for k, v in body.items() if k not in _RULE_SELECTORS}
        if fn in MODIFIERS:
            bad = modifier_problems(fn, args)
            if isinstance(args.get("index"), list):
                args["index"] = tuple(args["index"])
        else:
            args = _resolve_gain(args, f"{key}.gain", problems)
            if fn == "pretrained" and isinstance(args.get("rename"), list):
                # A YAML `[fc1, 0]` reads the 0 as a number: a prefix is text either way.
                args["rename"] = tuple(str(p) if isinstance(p, int) and not isinstance(p, bool) else p for p in args["rename"])
            bad = argument_problems(fn, args)
        for arg, message in bad:
            problems.add(f"{key}.{arg}", message)
        rule = _selector(index, fn, args, body, key, problems)
        if rule is not None and not bad:
            rules.append(rule)
    return tuple(rules)


def _resolve_gain(args: dict, key: str, problems: Problems) -> dict:
    # `gain: relu` or `gain: {nonlinearity: leaky_relu, param: 0.2}` -> a number via calculate_gain.
    gain = args.get("gain")
    if isinstance(gain, (int, float)) or gain is None or gain == "auto":
        return args
    name, param = (gain.get("nonlinearity"), gain.get("param")) if isinstance(gain, dict) else (gain, None)
    from torch.nn.init import calculate_gain  # a formula: no tensor is made

    try:
        return {**args, "gain": calculate_gain(name, param)}
    except (ValueError, TypeError) as error:
        problems.add(key, f"{error};{suggest(str(name), NONLINEARITIES) or ' known: ' + ', '.join(NONLINEARITIES)}")
        return {k: v for k, v in args.items() if k != "gain"}


def _selector(index: int, fn: str, args: dict, body: dict, key: str, problems: Problems) -> Rule | None:
    match = body.get("match", "*")
    patterns = tuple(str(m) for m in match) if isinstance(match, list) else (str(match),)
    regex = None
    if body.get("regex") is not None:
        try:
            regex = re.compile(str(body["regex"]))
        except re.error as error:
            problems.add(f"{key}.regex", f"invalid regular expression {body['regex']!r}: {error}")
            return None
    known = layer_types()
    selected = {}
    for selector in ("module", "type"):
        names = body.get(selector) or ()
        selected[selector] = (names,) if isinstance(names, str) else tuple(names)
        for module in selected[selector]:
            if module not in known and (selector == "type" or module not in ("_NormBase", "_ConvNd", "Module")):
                problems.add(f"{key}.{selector}", f"unknown layer type {module!r};{suggest(str(module), known)}".rstrip(";"))
    kind = body.get("kind")
    if kind is not None and kind not in KINDS:
        problems.add(f"{key}.kind", f"expected one of {', '.join(KINDS)}, got {kind!r}")
        return None
    optional = body.get("optional", False)
    if not isinstance(optional, bool):
        problems.add(f"{key}.optional", f"expected true or false, got {optional!r}")
    return Rule(index, fn, tuple(args.items()), patterns, regex, selected["module"], kind, optional is True, selected["type"])


# ---------------------------------------------------------------- optimizer


def _parse_optim(optim: dict, scheduler: SchedulerSpec, problems: Problems) -> OptimSpec:
    name = optim.get("name")
    known = optimizers()
    if name not in known:
        problems.add("optim.name", f"unknown optimizer {name!r};{suggest(str(name), known) or ' available: ' + ', '.join(sorted(known))}")
        name = None
    structural = {"name", "param_groups", "no_decay_bias_and_norm", "scheduler", "clip_grad_norm"}
    args = {k: v for k, v in optim.items() if k not in structural and v is not None}
    # lr 0 is a default no tensor uses when every group sets its own (torch accepts it): checked below.
    zero_lr = args.get("lr") == 0 and not isinstance(args.get("lr"), bool)
    if zero_lr:
        del args["lr"]
    if name is not None:
        args = _check_optimizer_args(name, args, "optim", problems)
    groups = []
    declared = optim.get("param_groups") or []
    for index, key, group in _mappings(declared, "optim.param_groups", "{name: head, match: 'head.*', lr: 0.01}", problems):
        group_name = group.get("name")
        if group_name is not None and not isinstance(group_name, str):
            problems.add(f"{key}.name", f"expected a string, got {group_name!r}")
        match = group.get("match")
        patterns = None if match is None else tuple(str(m) for m in match) if isinstance(match, list) else (str(match),)
        group_args = {k: v for k, v in group.items() if k not in ("name", "match")}
        if name is not None:
            group_args = _check_optimizer_args(name, group_args, key, problems, inherited=args)
        groups.append(GroupSpec(index, group_name, patterns, tuple(group_args.items())))
    _check_groups(groups, problems)
    if zero_lr:
        without = [f"optim.param_groups[{g.index}]" for g in groups if "lr" not in dict(g.args)]
        if groups and not without:
            args["lr"] = 0.0
        else:
            problems.add("optim.lr", "expected a number > 0; 0 is allowed only as a default that no tensor uses, when "
                                     f"every param group sets its own lr ({', '.join(without) + ' does not' if without else 'no param_groups are declared'})")
    clip = optim.get("clip_grad_norm")
    if clip is not None and clip <= 0:
        problems.add("optim.clip_grad_norm", f"expected a number > 0 (or null for no clipping), got {clip}")
    _check_scheduler(scheduler, problems)
    return OptimSpec(name or "?", tuple(args.items()), tuple(groups) or (GroupSpec(0, None, None, ()),),
                     optim.get("no_decay_bias_and_norm") is True, scheduler, clip)


def _check_groups(groups: list[GroupSpec], problems: Problems) -> None:
    rest = [g.index for g in groups if g.patterns is None]
    if len(rest) > 1:
        problems.add(f"optim.param_groups[{rest[1]}]", "only one group may leave out `match` (it takes the rest)")
    names: dict[str, int] = {}
    for group in groups:
        if group.name in names:
            problems.add(f"optim.param_groups[{group.index}].name", f"{group.name!r} already names optim.param_groups[{names[group.name]}]")
        if group.name is not None:
            names[group.name] = group.index


# Value domains of the common hyperparameters; every other argument is checked by the type of its default.
_OPTIM_DOMAINS = {
    "lr": (lambda v: v > 0, "a number > 0"),
    "eps": (lambda v: v > 0, "a number > 0"),
    "weight_decay": (lambda v: v >= 0, "a number >= 0"),
    "momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "dampening": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "alpha": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
}


def _check_optimizer_args(name: str, args: dict, key: str, problems: Problems, inherited: dict | None = None) -> dict:
    """Returns the arguments the optimizer takes (as its constructor wants them); adds a problem for the rest."""
    accepted = optimizer_arguments(name)
    checked = {}
    for arg, value in args.items():
        where = f"{key}.{arg}"
        if arg not in accepted:
            hint = suggest(arg, accepted) or " it takes: " + ", ".join(accepted)
            if key == "optim" and arg in _names(OptimConfig):  # set by the optim option chosen, e.g. adam's betas
                hint += f" (leave it out with {where}=null)"
            problems.add(where, f"{name} takes no argument {arg!r};{hint}")
            continue
        message = _optimizer_value_problem(arg, value, accepted[arg])
        if message:
            problems.add(where, f"expected {message}, got {value!r}")
            continue
        checked[arg] = tuple(value) if isinstance(value, list) else value
    effective = {**(inherited or {}), **checked}
    if effective.get("nesterov") and (effective.get("momentum", 0) <= 0 or effective.get("dampening", 0) != 0):
        problems.add(f"{key}.nesterov", "Nesterov momentum needs momentum > 0 and dampening 0")
    return checked


def _optimizer_value_problem(arg: str, value: Any, parameter: inspect.Parameter) -> str | None:
    """Returns what `arg` expects when `value` is outside it: the common hyperparameters' domains,
    else what the signature says (a bool, an optional bool, a tuple of numbers, a number)."""
    default = parameter.default
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if arg in _OPTIM_DOMAINS:
        test, expected = _OPTIM_DOMAINS[arg]
        return None if number and test(value) else expected
    if isinstance(default, bool) or "bool" in str(parameter.annotation):
        return None if isinstance(value, bool) or (default is None and value is None) else "true or false"
    if isinstance(default, tuple):
        ok = isinstance(value, (list, tuple)) and len(value) == len(default) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        if ok and arg == "betas" and not all(0 <= v < 1 for v in value):
            ok = False
        return None if ok else f"{len(default)} numbers" + (" in [0, 1)" if arg == "betas" else "")
    if isinstance(default, (int, float)):
        return None if number else "a number"
    return None


def _check_scheduler(cfg: SchedulerSpec, problems: Problems) -> None:
    _check_choice(cfg.name, SCHEDULERS, "optim.scheduler.name", problems)
    if cfg.step_size < 1:
        problems.add("optim.scheduler.step_size", f"expected an integer >= 1, got {cfg.step_size}")
    if not 0 < cfg.gamma <= 1:
        problems.add("optim.scheduler.gamma", f"expected 0 < gamma <= 1, got {cfg.gamma}")
    if cfg.warmup_steps < 0:
        problems.add("optim.scheduler.warmup_steps", f"expected an integer >= 0, got {cfg.warmup_steps}")
    if cfg.min_lr < 0:
        problems.add("optim.scheduler.min_lr", f"expected a number >= 0, got {cfg.min_lr}")


# ---------------------------------------------------------------- data and trainer


def _check_choice(value: Any, options: Any, key: str, problems: Problems) -> None:
    if value not in options:
        problems.add(key, f"expected one of {', '.join(options)}, got {value!r};{suggest(str(value), options)}".rstrip(";"))


def _check_positive(value: Any, key: str, problems: Problems, allow_zero: bool = False) -> None:
    if value is None:
        return
    if (value < 0) if allow_zero else (value <= 0):
        problems.add(key, f"expected a number {'>= 0' if allow_zero else '> 0'}, got {value}")


def _check_data(data: DataSpec, problems: Problems) -> None:
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
        elif not data.path.endswith((".npz", ".csv", ".pt")):
            problems.add("data.path", f"expected a .npz, .csv or .pt file, got {data.path!r}")




def _parse_tracker(tracker: TrackerConfig | None, problems: Problems) -> Any:
    if tracker is None:
        return None
    spec = _freeze(tracker, TrackerSpec)
    _check_choice(spec.name, TRACKERS, "tracker.name", problems)
    if not isinstance(spec.uri, str) or not spec.uri:
        problems.add("tracker.uri", f"expected MLflow's tracking URI (sqlite:///mlflow.db, http://host:5000, ...), got {spec.uri!r}")
    if spec.experiment is not None and not str(spec.experiment).strip():
        problems.add("tracker.experiment", "expected an experiment name, or null")
    return spec


def _check_trainer(trainer: TrainerSpec, problems: Problems) -> None:
    _check_positive(trainer.epochs, "trainer.epochs", problems)
    _check_positive(trainer.max_steps, "trainer.max_steps", problems, allow_zero=True)
    _check_positive(trainer.batch_size, "trainer.batch_size", problems)
    _check_positive(trainer.accumulate_grad_batches, "trainer.accumulate_grad_batches", problems)
    if trainer.ema_decay is not None and not 0.0 < trainer.ema_decay < 1.0:
        problems.add("trainer.ema_decay", f"expected null or a number strictly between 0 and 1 (0.999 is common), got {trainer.ema_decay}")
    _check_positive(trainer.log_every, "trainer.log_every", problems)
    _check_positive(trainer.hist_every, "trainer.hist_every", problems, allow_zero=True)
    _check_positive(trainer.threads, "trainer.threads", problems, allow_zero=True)
    _check_positive(trainer.ckpt_every, "trainer.ckpt_every", problems, allow_zero=True)
    _check_positive(trainer.keep_last, "trainer.keep_last", problems)
    _check_choice(trainer.loss, ("auto", *LOSSES), "trainer.loss", problems)
    _check_choice(trainer.dtype, DTYPES, "trainer.dtype", problems)
    if trainer.autocast is not None:
        if trainer.autocast not in AUTOCAST:
            problems.add("trainer.autocast", f"expected null, bfloat16 or float16, got {trainer.autocast!r};{suggest(str(trainer.autocast), AUTOCAST)}".rstrip(";"))
        elif trainer.dtype != "float32":
            problems.add("trainer.autocast", f"autocast computes in {trainer.autocast} from float32 weights; trainer.dtype is {trainer.dtype} "
                                             "(set trainer.dtype=float32, or trainer.autocast=null)")
    _check_choice(trainer.progress, PROGRESS, "trainer.progress", problems)
    _check_choice(trainer.strategy, ("single", "ddp"), "trainer.strategy", problems)
    check_device_name(trainer.device, "trainer.device", problems)


@dataclass(frozen=True)
class MonitorSpec:
    """trainer.early_stopping: the metric watched at every evaluation, and when to stop."""

    metric: str = "val_loss"
    mode: str = "min"
    patience: int = 3
    min_delta: float = 0.0


MONITORED = ("val_loss", "train_loss", "val_accuracy")


def parse_monitor(declared: Any, task: str, problems: Problems) -> MonitorSpec | None:
    """Returns trainer.early_stopping as a MonitorSpec (None when not set), adding a problem per bad key."""
    if declared is None:
        return None
    key = "trainer.early_stopping"
    if not isinstance(declared, dict):
        problems.add(key, f"expected a mapping such as {{metric: val_loss, mode: min, patience: 3, min_delta: 0.0}}, got {declared!r}")
        return None
    known = ("metric", "mode", "patience", "min_delta")
    for unknown in sorted(set(declared) - set(known)):
        problems.add(f"{key}.{unknown}", f"unknown key;{suggest(str(unknown), list(known)) or ' it takes: ' + ', '.join(known)}")
    metric = declared.get("metric", "val_loss")
    available = [m for m in MONITORED if m != "val_accuracy" or (task in TASKS and TASKS[task].classifies)]
    if metric not in available:
        hint = suggest(str(metric), available) or f" this task logs: {', '.join(available)}"
        problems.add(f"{key}.metric", f"{metric!r} is not a metric of this run;{hint}")
        metric = "val_loss"
    mode = declared.get("mode", "max" if metric == "val_accuracy" else "min")
    if mode not in ("min", "max"):
        problems.add(f"{key}.mode", f"expected min or max, got {mode!r}")
    patience, min_delta = declared.get("patience", 3), declared.get("min_delta", 0.0)
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        problems.add(f"{key}.patience", f"expected a whole number of evaluations >= 1, got {patience!r}")
    if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or min_delta < 0:
        problems.add(f"{key}.min_delta", f"expected a number >= 0, got {min_delta!r}")
    return MonitorSpec(str(metric), str(mode), patience if isinstance(patience, int) else 3,
                       float(min_delta) if isinstance(min_delta, (int, float)) else 0.0)


def check_device_name(name: Any, key: str, problems: Problems) -> bool:
    """Adds a problem unless `name` is a device name this tool knows (auto, cpu, cuda, cuda:N, mps)."""
    if isinstance(name, str) and DEVICE_FORM.match(name):
        return True
    problems.add(key, f"expected auto, cpu, cuda, cuda:N or mps, got {name!r}")
    return False
