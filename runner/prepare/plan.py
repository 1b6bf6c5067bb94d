"""Spec -> plan: the spec resolved once against the module tree, on the meta device (no memory).

The plan holds the tensor index (canonical names, aliases, shapes, kinds), the resolved tensor
declarations (ties, buffers, frozen), which init rule sets each tensor and each optimizer group's
members. Building the real model materializes exactly this: nothing downstream matches a glob or
parses a config again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch
from omegaconf import DictConfig
from torch import nn

from runner.config.schema import conf_dir
from runner.data.sources import Dataset, input_shape
from runner.errors import Problems, suggest
from runner.init import pretrained
from runner.init.apply import Modifiers, assign_rules
from runner.model.activations import leaf_layers
from runner.model.build import build_model, materialize
from runner.model.tensors import Declarations, declare_tensors, tensor_index
from runner.prepare.machine import check_machine
from runner.prepare.optim import Membership, assign_groups, trainable
from runner.registry.layers import Graph, Item
from runner.registry.tables import TASKS
from runner.spec import RunSpec, parse
from runner.spec.types import INPUT, Rule


@dataclass(frozen=True)
class PlannedTensor:
    """One unique tensor as the plan sees it: names, shape, kind, the rule that sets it, its group."""

    name: str
    aliases: tuple[str, ...]
    shape: tuple[int, ...]
    kind: str
    rule: Rule | None
    group: str | None
    dtype: str = "float32"  # as built; placement casts floating tensors to trainer.dtype and leaves the rest


@dataclass(frozen=True)
class Watch:
    """What `trainer.watch` selects: trainable tensors (canonical names) and leaf layers (path names)."""

    tensors: frozenset[str] = frozenset()
    layers: tuple[str, ...] = ()


# Below this many parameters a run uses one torch thread unless trainer.threads says otherwise (Plan.threads).
SMALL_MODEL = 100_000


@dataclass(frozen=True)
class Plan:
    spec: RunSpec
    declarations: Declarations
    init: dict[str, Rule]  # canonical tensor name -> the rule that sets it
    modifiers: Modifiers  # canonical tensor name -> the modifier rules that then change it, in order
    groups: Membership
    tensors: tuple[PlannedTensor, ...]
    eval_modules: tuple[str, ...] = ()  # modules kept in eval mode while training, by name
    watch: Watch = Watch()

    def materialize(self) -> nn.Module:
        """Returns the real CPU model this plan describes, with PyTorch's default init drawn from the seed."""
        return materialize(self.spec.model, self.declarations, self.spec.seed)

    @property
    def parameters(self) -> int:
        """Elements in the model's parameters, trainable and frozen (each stored tensor once)."""
        return sum(math.prod(t.shape) for t in self.tensors if t.kind in ("parameter", "frozen"))

    @property
    def threads(self) -> int:
        """The torch threads the run uses (0: torch's default, one per core): `trainer.threads` when set;
        otherwise 1 for a model under SMALL_MODEL parameters, whose ops are too small to gain from more
        threads and lose badly to a busy neighbour (figure 18 in docs/benchmarks.md)."""
        requested = self.spec.trainer.threads
        if requested > 0:
            return requested
        return 1 if self.parameters < SMALL_MODEL else 0


def make_plan(spec: RunSpec, problems: Problems) -> Plan | None:
    """Returns the plan for a spec, adding every shape, tie, rule and group problem to `problems`.

    Returns None when the layers themselves could not be built (nothing else can be checked then).
    """
    if not spec.model.layers or any(p.key.startswith("model.layers") for p in problems.items):
        return None
    before = len(problems.items)
    with torch.device("meta"):
        model = build_model(spec.model, problems)
    if len(problems.items) > before:
        return None
    declarations = declare_tensors(model, spec.model, problems)
    entries = tensor_index(model)
    init, modifiers = assign_rules(entries, spec.init, problems)
    groups = assign_groups(trainable(model), spec.optim, problems)
    group_of = {name: group.label for group, names in groups for name in names}
    tensors = tuple(
        PlannedTensor(e.name, e.aliases, tuple(e.tensor.shape), e.kind, init.get(e.name), group_of.get(e.name),
                      str(e.tensor.dtype).removeprefix("torch."))
        for e in entries
    )
    eval_modules = _resolve_eval_modules(model, spec.model.eval_modules, problems)
    watch = _resolve_watch(model, spec.trainer.watch, problems)
    if not any(p.key.startswith("data.") for p in problems.items):
        _check_forward(model, spec, problems)
    return Plan(spec, declarations, init, modifiers, groups, tensors, eval_modules, watch)


def _resolve_eval_modules(model: nn.Module, globs: tuple[str, ...], problems: Problems) -> tuple[str, ...]:
    names = [name for name, _ in model.named_modules() if name and ".parametrizations" not in name]
    resolved: list[str] = []
    for index, pattern in enumerate(globs):
        hits = [name for name in names if fnmatchcase(name, pattern)]
        if not hits:
            problems.add(f"model.eval_modules[{index}]", f"{pattern!r} matches no module;{suggest(pattern, names) or ' modules: ' + ', '.join(names[:12])}")
        resolved.extend(hit for hit in hits if hit not in resolved)
    return tuple(resolved)


def _resolve_watch(model: nn.Module, globs: tuple[str, ...], problems: Problems) -> Watch:
    """A glob selects a trainable tensor or a layer by its name, or everything inside a module it names."""
    modules = [name for name, _ in model.named_modules() if name and ".parametrizations" not in name]
    tensor_names = [name for e in trainable(model) for name in (e.name, *e.aliases)]
    for index, pattern in enumerate(globs):
        if not any(fnmatchcase(name, pattern) for name in (*modules, *tensor_names)):
            known = modules + tensor_names
            problems.add(f"trainer.watch[{index}]", f"{pattern!r} matches no layer or tensor;{suggest(pattern, known) or ' layers: ' + ', '.join(modules[:12])}")

    def watched(name: str) -> bool:
        parts = name.split(".")
        return any(fnmatchcase(".".join(parts[:end]), pattern) for pattern in globs for end in range(1, len(parts) + 1))

    tensors = frozenset(e.name for e in trainable(model) if any(watched(n) for n in (e.name, *e.aliases)))
    return Watch(tensors, tuple(name for name in leaf_layers(model) if watched(name)))


def check(cfg: DictConfig | dict, machine: bool = True) -> tuple[Plan, Dataset | None]:
    """Returns the plan of a config (and its data, when `machine`), or raises one ConfigError listing
    every problem: spec, plan (shapes, ties, rules, groups) and, when `machine`, this machine's
    (device, torchrun, the data file and its contents)."""
    problems = Problems()
    spec = parse(cfg, problems)
    plan = make_plan(spec, problems)
    data = check_machine(spec, problems) if machine else None
    resolved = data.resolved_transforms() if isinstance(data, Dataset) else None
    if resolved is not None:  # the saved config says what the run normalized with, not only that it normalized
        spec.config["data"]["transforms"] = resolved
    if machine and plan is not None:
        pretrained.check(plan, problems)  # the files' headers: names, shapes, dtypes
    problems.raise_if_any()
    assert plan is not None  # no problem was found, so the layers were built
    return plan, data


def validate(cfg: DictConfig | dict) -> Plan:
    """Returns the plan of a config (config validity only), or raises one ConfigError listing every problem."""
    return check(cfg, machine=False)[0]


def example_input(spec: RunSpec, batch: int, device: torch.device | str) -> torch.Tensor:
    """Returns a zero batch shaped and typed like the data the model will see."""
    return torch.zeros(batch, *input_shape(spec.data), dtype=TASKS[spec.data.task].input_dtype, device=device)


def expected_output_shape(spec: RunSpec, batch: int) -> tuple[int, ...]:
    """Returns the output shape the task's loss needs for a batch of this size."""
    rows = batch * spec.data.num_features if TASKS[spec.data.task].per_token else batch
    return (rows, spec.data.num_outputs)


def _check_forward(model: nn.Module, spec: RunSpec, problems: Problems) -> None:
    """Runs a batch of 2 through the model, in eval mode, to check that layer shapes chain.

    The meta model gets uninitialized CPU storage (to_empty): an eval forward only reads it, so
    the pages are never committed. (A forward on meta would do, but its `linear` kernel imports
    torch._dynamo: 2 s of start-up.) This replaces the model's tensors: it must run last.
    """
    model.to_empty(device="cpu").eval()
    running: list[tuple[str, tuple]] = []  # (layer, shapes of its inputs), in call order
    hooks = [
        module.register_forward_pre_hook(lambda _m, args, name=name: running.append((name, _shapes(args))))
        for name, module in model.named_modules()
        if name
    ]
    batch = 2
    x = example_input(spec, batch, "cpu")
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as error:  # any layer's own complaint about its input is the config's problem
        if running:
            name, shapes = running[-1]
            where = f"layer {name!r} ({type(model.get_submodule(name)).__name__}) failed on {_describe_inputs(model, name, shapes)}"
        else:
            where = f"the model failed on input of shape {tuple(x.shape)}"
        # Failing before any layer changed the input's shape is what a model meant for other data does.
        untouched = all(shapes == (tuple(x.shape),) for _, shapes in running)
        hint = _preset_hint(spec, otherwise=" (is this model meant for other data? see the experiment presets: experiment=...)" if untouched else "")
        if running and any(isinstance(s, str) for s in running[-1][1]) and not isinstance(model.get_submodule(running[-1][0]), Item):
            hint += " (a tuple: take one element with {type: Item, index: 0})"
        problems.add("model.layers", f"{where}: {str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}{hint}")
        return
    finally:
        for hook in hooks:
            hook.remove()
    want = expected_output_shape(spec, batch)
    if not isinstance(out, torch.Tensor):  # a layer returning a tuple (MultiheadAttention: output, weights) came last
        problems.add("model.layers", f"the model's output is {_shape(out)}, not a tensor; take one element with "
                                     f"{{type: Item, index: 0}} (the task needs {want})")
    elif tuple(out.shape) != want:
        problems.add(
            "model.layers",
            f"the model's output has shape {tuple(out.shape)} for input {tuple(x.shape)}; the {spec.data.task} "
            f"task needs {want} (data.num_outputs={spec.data.num_outputs}){_preset_hint(spec)}",
        )


def _preset_hint(spec: RunSpec, otherwise: str = "") -> str:
    """Points to the experiment preset named after the model, where one ships (it brings the model's data)."""
    if (conf_dir() / "experiment" / f"{spec.model.name}.yaml").is_file():
        return f" (this model is meant for other data: experiment={spec.model.name})"
    return otherwise


def _shapes(args: tuple) -> tuple[tuple[int, ...] | str, ...]:
    """Returns each tensor argument's shape, and for a tuple argument (the output of MultiheadAttention) its description."""
    return tuple(tuple(a.shape) if isinstance(a, torch.Tensor) else _shape(a) for a in args if isinstance(a, (torch.Tensor, tuple, list)))


def _shape(value: object) -> str:
    """Returns a value's shape for messages: `(2, 5, 4)`, or for a layer's tuple output `a tuple of (2, 5, 4), (2, 5, 5)`."""
    if isinstance(value, torch.Tensor):
        return str(tuple(value.shape))
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of " + ", ".join(_shape(v) if isinstance(v, (torch.Tensor, tuple, list)) else repr(v) for v in value)
    return f"a {type(value).__name__}"


def _describe_inputs(model: nn.Module, name: str, shapes: tuple) -> str:
    """`its input of shape (2, 8)`, or for a layer of a graph `inputs f (2, 8), alpha (3,)`."""
    parent_name, _, local = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    wiring = dict(parent.steps) if isinstance(parent, Graph) else {}
    if local in wiring and len(wiring[local]) == len(shapes) and (len(shapes) > 1 or wiring[local][0] not in (INPUT,)):
        return "inputs " + ", ".join(f"{n} ({s})" if isinstance(s, str) else f"{n} {s}" for n, s in zip(wiring[local], shapes))
    if len(shapes) == 1:
        return f"its input, {shapes[0]}" if isinstance(shapes[0], str) else f"its input of shape {shapes[0]}"
    return "inputs of shapes " + ", ".join(str(s) for s in shapes)
