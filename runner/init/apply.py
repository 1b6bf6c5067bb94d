"""Init is data: ordered rules (parsed in runner/spec/init.py) select tensors by name, module type and kind.

`assign_rules` decides, once, which rule sets each tensor (the plan keeps the answer);
`apply_init` carries that out. Rules draw from one CPU torch.Generator seeded from the run's
seed, before the model moves, so a seed gives the same weights on every device.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from runner.errors import Problems
from runner.model.tensors import TensorEntry, tensor_index
from runner.registry.init_functions import init_functions
from runner.registry.layers import Graph
from runner.registry.modifiers import apply_modifier, index_problem
from runner.registry.tables import module_type_names
from runner.spec.types import InitSpec, Rule

Modifiers = dict[str, tuple[Rule, ...]]  # canonical tensor name -> the modifier rules it gets, in order
Pretrained = dict[str, tuple[torch.Tensor, Any]]  # canonical tensor name -> (values, runner.init.pretrained.Source)


def assign_rules(entries: list[TensorEntry], spec: InitSpec, problems: Problems) -> tuple[dict[str, Rule], Modifiers]:
    """Returns which rule sets each tensor (by canonical name), and which modifier rules then change
    it. Later rules win; a tied tensor must get one answer; a rule must reach some tensor it can
    initialize and win at least one; a modifier must reach some tensor."""
    setters = tuple(rule for rule in spec.rules if not rule.modifies)
    assignment: dict[str, Rule] = {}
    reached: dict[int, list[tuple[str, str]]] = {rule.index: [] for rule in spec.rules}  # (name selected, canonical name)
    wrong_dims: dict[int, tuple[Rule, list[str]]] = {}  # rule index -> (rule, the tensors it cannot set)
    modifiers = _assign_modifiers(entries, tuple(rule for rule in spec.rules if rule.modifies), problems)
    for entry in entries:
        per_alias = {entry.rule_name(name): _last_rule(setters, entry, name, reached) for name in entry.names}
        chosen = {name: rule for name, rule in per_alias.items() if rule is not None}
        if not chosen:
            if spec.strict and entry.kind == "parameter":
                problems.add("init.rules", f"strict: no rule sets trainable tensor {entry.name!r}")
            continue
        conflict = _conflicting_aliases(chosen)
        if conflict:
            (a_name, a), (b_name, b) = conflict
            problems.add(
                f"init.rules[{b.index}]",
                f"{a_name!r} and {b_name!r} are one tied tensor, but {a.label} reaches {a_name!r} while "
                f"{b.label} reaches {b_name!r}; give every alias the same rule",
            )
            continue
        rule = max(chosen.values(), key=lambda r: r.index)
        name, dims = reach(entry, rule)
        _check_infinite(rule, entry, problems)
        if not init_functions()[rule.fn].fits(entry.tensor.dim()):
            wrong_dims.setdefault(rule.index, (rule, []))[1].append(f"{name!r} {tuple(entry.view(dims).shape)}")
        assignment[entry.name] = rule
    for rule, reached_names in wrong_dims.values():
        problems.add(f"init.rules[{rule.index}]", f"{rule.fn} needs a tensor with {init_functions()[rule.fn].dims_needed()}; it reaches "
                                                  f"{some_names(reached_names)} (narrow `match`, or set `kind: weight`)")
    _check_unused(setters, assignment, reached, problems)
    return assignment, modifiers


def _assign_modifiers(entries: list[TensorEntry], rules: tuple[Rule, ...], problems: Problems) -> Modifiers:
    found: dict[str, list[Rule]] = {}
    for rule in rules:
        hits = [e for e in entries if any(_selects(rule, e, n) for n in e.names)]
        if not hits and not rule.optional:
            problems.add(f"init.rules[{rule.index}]", f"selects no tensor ({rule.selector}); fix the selector or mark it `optional: true`")
        for entry in hits:
            name, dims = reach(entry, rule)
            shape = tuple(entry.view(dims).shape)
            wrong = index_problem(dict(rule.args).get("index"), shape)
            if wrong:
                problems.add(f"init.rules[{rule.index}].index", f"{wrong} ({name!r} is {shape})")
                break
            _check_infinite(rule, entry, problems)
            found.setdefault(entry.name, []).append(rule)
    return {name: tuple(rules) for name, rules in found.items()}


def _check_infinite(rule: Rule, entry: TensorEntry, problems: Problems) -> None:
    """±inf means something in a mask (a buffer or frozen tensor); in a trainable tensor the first step is NaN."""
    value = next((v for k, v in rule.args if k in ("val", "value")), None)
    if entry.kind == "parameter" and isinstance(value, float) and math.isinf(value):
        arg = "val" if rule.fn == "constant_" else "value"
        problems.add(f"init.rules[{rule.index}].{arg}", f"{value} reaches trainable {entry.name!r}; only a buffer or a frozen "
                                                         "tensor may hold ±inf (an attention mask), a trained one would give NaN")


def some_names(names: list[str]) -> str:
    """Returns up to three names, and how many more there are."""
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _selects(rule: Rule, entry: TensorEntry, name: str) -> bool:
    """True when `rule` reaches `entry` through its name `name` (a transposed tie's target by its plain name)."""
    return rule.selects(entry.rule_name(name), entry.role, module_type_names(entry.module_type), entry.module_type.__name__)


def reach(entry: TensorEntry, rule: Rule) -> tuple[str, tuple[int, int] | None]:
    """Returns the name through which `rule` sets `entry`, and the dims that name reads swapped (None:
    the stored layout). A rule that reaches the tensor only through a transposed tie's target sees
    the target's layout (its shape, fans and indices); one that reaches a name reading the stored
    layout, or targets of different layouts, sees the stored layout."""
    names = [name for name in entry.names if _selects(rule, entry, name)]
    layouts = {entry.dims(name) for name in names}
    if len(layouts) == 1 and None not in layouts:
        return entry.rule_name(names[0]), layouts.pop()
    return next((name for name in entry.names if entry.dims(name) is None), entry.name), None


def _last_rule(rules: tuple[Rule, ...], entry: TensorEntry, name: str, reached: dict[int, list[tuple[str, str]]]) -> Rule | None:
    winner = None
    for rule in rules:
        if _selects(rule, entry, name):
            reached[rule.index].append((entry.rule_name(name), entry.name))
            winner = rule
    return winner


def _check_unused(rules: tuple[Rule, ...], assignment: dict[str, Rule], reached: dict[int, list[tuple[str, str]]], problems: Problems) -> None:
    winners = {rule.index for rule in assignment.values()}
    for rule in rules:
        if rule.index in winners or rule.optional:
            continue
        names = [name for name, _ in reached[rule.index]]
        if not names:
            problems.add(f"init.rules[{rule.index}]", f"selects no tensor ({rule.selector}); fix the selector or mark it `optional: true`")
            continue
        # By canonical name: a rule that reaches a tied tensor through an alias is overridden where its tensor is.
        later = sorted({assignment[c].index for _, c in reached[rule.index] if c in assignment and assignment[c].index > rule.index})
        if later:
            by = ", ".join(f"init.rules[{i}]" for i in later)
            problems.add(f"init.rules[{rule.index}]", f"selects {some_names([repr(n) for n in names])}, but later rules set all of them ({by}), so it sets nothing; remove it or mark it `optional: true`")


def _conflicting_aliases(chosen: dict[str, Rule]) -> tuple[tuple[str, Rule], tuple[str, Rule]] | None:
    """Returns two aliases of one tensor that different init functions reach, or None."""
    items = list(chosen.items())
    for name, rule in items[1:]:
        if (rule.fn, rule.args) != (items[0][1].fn, items[0][1].args):
            return items[0], (name, rule)
    return None


@dataclass(frozen=True)
class Provenance:
    """What set a tensor's initial values, and the std that scheme predicts (None where it has none)."""

    source: str
    predicted_std: float | None = None


# What `gain: auto` reads from the layer that follows: activation class -> calculate_gain's name.
FOLLOWING_GAIN = {"ReLU": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid", "LeakyReLU": "leaky_relu", "SELU": "selu"}


def following_gain(model: nn.Module, tensor_name: str) -> float:
    """Returns calculate_gain for the activation right after the tensor's layer (1.0 if none follows)."""
    owner_path, _, _ = tensor_name.rpartition(".")
    parent_path, _, local = owner_path.rpartition(".")
    parent = model.get_submodule(parent_path)
    siblings = list(parent.named_children())
    if isinstance(parent, Graph):  # in forward order, without layers that are never called (call: false)
        siblings = [(name, parent.get_submodule(name)) for name, _ in parent.steps]
    names = [name for name, _ in siblings]
    if local not in names or names.index(local) + 1 == len(siblings):
        return 1.0
    following = siblings[names.index(local) + 1][1]
    name = FOLLOWING_GAIN.get(type(following).__name__)
    if name is None:
        return 1.0
    return nn.init.calculate_gain(name, getattr(following, "negative_slope", None))


@torch.no_grad()
def apply_init(model: nn.Module, assignment: dict[str, Rule], seed: int, batch: torch.Tensor | None = None,
               modifiers: Modifiers | None = None, pretrained: Pretrained | None = None) -> dict[str, Provenance]:
    """Applies the planned rules on the model's current (CPU) device, then the modifier rules in
    order; returns tensor name -> provenance.

    Without a batch, LSUV's data-dependent rescaling is skipped (loading a run: its weights come
    from the checkpoint; every draw from the generator still happens, so other tensors match).
    `pretrained` holds the values `fn: pretrained` rules copy (runner.init.pretrained.read); a tensor
    such a rule sets that it lacks keeps its value (loading a run: the checkpoint has it)."""
    generator = torch.Generator().manual_seed(seed)
    functions = init_functions()
    provenance: dict[str, Provenance] = {}
    lsuv: list[tuple[str, TensorEntry, Rule]] = []
    for entry in tensor_index(model):
        rule = assignment.get(entry.name)
        if rule is None:
            provenance[entry.name] = Provenance(_untouched(model, entry))
            continue
        function = functions[rule.fn]
        if function.reads_file:
            values, source = (pretrained or {}).get(entry.name, (None, None))
            if values is not None:
                entry.tensor.copy_(values)
            provenance[entry.name] = Provenance(source.label if source is not None else rule.label)
            continue
        fn, kwargs, label = function.fn, dict(rule.args), rule.label
        name, dims = reach(entry, rule)
        if function.needs_batch:
            kwargs = {}  # its arguments drive the rescaling below (LSUV: tol, max_iters); the start takes none
            lsuv.append((name, entry, rule))
        if kwargs.get("gain") == "auto":
            kwargs["gain"] = following_gain(model, name)
            label += f" (gain {kwargs['gain']:.4g})"
        if "generator" in inspect.signature(fn).parameters:
            kwargs["generator"] = generator
        # Through a transposed tie's target: a contiguous copy in its layout, so the draws land as they
        # would in a tensor of that shape (and functions that reshape, such as orthogonal_, work).
        values = entry.view(dims).contiguous() if dims is not None else entry.tensor
        fn(values, **kwargs)
        if dims is not None:
            entry.view(dims).copy_(values)
        provenance[entry.name] = Provenance(label, function.std(kwargs, values) if function.std is not None else None)
    if lsuv and batch is not None:
        _lsuv_rescale(model, lsuv, batch)
    by_name = {entry.name: entry for entry in tensor_index(model)}
    for name, rules in (modifiers or {}).items():
        modify(by_name[name], rules)
        before = provenance[name]
        labels = " + ".join(r.label for r in rules)
        std = before.predicted_std
        if std is not None:
            std = _modified_std(std, rules)
        provenance[name] = Provenance(f"{before.source}, then {labels}", std)
    return provenance


def modify(entry: TensorEntry, rules: tuple[Rule, ...]) -> None:
    """Applies modifier rules to a tensor in place, in order, each in the layout it reaches the tensor by."""
    for rule in rules:
        apply_modifier(rule.fn, dict(rule.args), entry.view(reach(entry, rule)[1]))


@torch.no_grad()
def copy_pretrained(model: nn.Module, pretrained: Pretrained, modifiers: Modifiers) -> None:
    """Copies pretrained values again once the model is placed, then their modifiers: in the target
    dtype (float64 would otherwise keep only the float32 of init), and exactly the file's."""
    by_name = {entry.name: entry for entry in tensor_index(model)}
    for name, (values, _) in pretrained.items():
        by_name[name].tensor.copy_(values)
        modify(by_name[name], modifiers.get(name, ()))


def _modified_std(std: float, rules: tuple[Rule, ...]) -> float | None:
    """The std after modifiers: `add` keeps it, `scale` multiplies it; an indexed or masking edit has none."""
    for rule in rules:
        args = dict(rule.args)
        if rule.fn in ("fill", "mask") or "index" in args:
            return None
        if rule.fn == "scale":
            std *= abs(args["value"])
    return std


def _untouched(model: nn.Module, entry: TensorEntry) -> str:
    """What a tensor no rule reaches holds: its layer's own init, or zeros for a declared tensor."""
    owner = model.get_submodule(entry.name.rpartition(".")[0]) if "." in entry.name else model
    if isinstance(owner, Graph):
        return "zeros (declared)"
    return "pytorch default" if entry.role != "buffer" else "module buffer"


def _lsuv_rescale(model: nn.Module, targets: list[tuple[str, TensorEntry, Rule]], batch: torch.Tensor) -> None:
    """Mishkin & Matas (2016): scale each selected layer, in forward order, to unit output variance.
    The layer is the one of the name the rule reached the tensor by (a transposed tie's target: its own)."""
    owners = {id(model.get_submodule(name.rpartition(".")[0])): (e, r) for name, e, r in targets}
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, _i, _o: order.append(mod)) for m in model.modules() if id(m) in owners]
    was_training = model.training
    model.eval()
    model(batch)
    for hook in hooks:
        hook.remove()
    seen: set[int] = set()
    for module in order:
        if id(module) in seen:
            continue
        seen.add(id(module))
        entry, rule = owners[id(module)]
        args = dict(rule.args)
        _scale_to_unit_variance(model, module, entry.tensor, batch, float(args.get("tol", 0.1)), int(args.get("max_iters", 10)))
    model.train(was_training)


def _scale_to_unit_variance(model: nn.Module, module: nn.Module, weight: torch.Tensor, batch: torch.Tensor, tol: float, max_iters: int) -> None:
    captured: list[torch.Tensor] = []
    hook = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        for _ in range(max_iters):
            captured.clear()
            model(batch)
            variance = captured[0].var().item()
            if abs(variance - 1.0) < tol or variance == 0.0:
                break
            weight.div_(math.sqrt(variance))
    finally:
        hook.remove()
