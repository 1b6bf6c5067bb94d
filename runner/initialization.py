"""Init is data: ordered rules select tensors by name, module type and kind, and name a function.

Every function of torch.nn.init, the project's own (`piecewise`, `lsuv`) and functions registered
through `register_init` may be named; nothing else. Rules draw from one CPU torch.Generator seeded
from the run's seed, before the model moves, so a seed gives the same weights on every device.
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from runner.errors import Problems, suggest
from runner.registry import module_type_names
from runner.tensors import TensorEntry, matches, tensor_index

TORCH_INIT = (
    "uniform_", "normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_", "xavier_uniform_",
    "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "trunc_normal_", "orthogonal_", "sparse_",
)
SELECTOR_KEYS = ("match", "regex", "module", "kind", "fn", "optional")
KINDS = ("weight", "bias", "buffer", "any")


def piecewise_(tensor: torch.Tensor, low: float = 5.0, high: float = 10.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """The source notes' custom law: U(low, high) w.p. 1/4, 0 w.p. 1/2, U(-high, -low) w.p. 1/4 (for low = high / 2)."""
    with torch.no_grad():
        tensor.uniform_(-high, high, generator=generator)
        tensor.mul_(tensor.abs() >= low)
    return tensor


def lsuv_(tensor: torch.Tensor, tol: float = 0.1, max_iters: int = 10, generator: torch.Generator | None = None) -> torch.Tensor:
    """Orthogonal start for LSUV; the data-dependent rescaling runs after all rules (see `_lsuv_rescale`)."""
    return nn.init.orthogonal_(tensor, generator=generator)


_REGISTERED: dict[str, Callable[..., Any]] = {"piecewise": piecewise_, "lsuv": lsuv_}


def register_init(name: str, fn: Callable[..., Any]) -> None:
    """Makes `fn(tensor, **args)` nameable as `fn: <name>` in init rules (it may take `generator=`)."""
    if name in TORCH_INIT:
        raise ValueError(f"{name!r} is a torch.nn.init function and cannot be replaced")
    _REGISTERED[name] = fn


def init_functions() -> dict[str, Callable[..., Any]]:
    """Returns every function an init rule may name."""
    return {**{name: getattr(nn.init, name) for name in TORCH_INIT}, **_REGISTERED}


@dataclass(frozen=True)
class Rule:
    index: int
    fn: str
    args: tuple[tuple[str, Any], ...]
    patterns: tuple[str, ...] = ("*",)
    regex: re.Pattern | None = None
    modules: tuple[str, ...] = ()
    kind: str | None = None
    optional: bool = False

    @property
    def label(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.args)
        return f"rule[{self.index}] {self.fn}({args})"

    def selects(self, entry: TensorEntry, name: str) -> bool:
        if self.kind is None:
            if entry.role == "buffer":  # buffers are reached only on purpose
                return False
        elif self.kind != "any" and entry.role != self.kind:
            return False
        if self.modules and not set(self.modules) & module_type_names(entry.module_type):
            return False
        if self.regex is not None:
            return self.regex.search(name) is not None
        return any(matches((name,), pattern) for pattern in self.patterns)


@dataclass
class InitPlan:
    """Which rule sets which tensor (by canonical name), and the rules themselves."""

    rules: list[Rule]
    assignment: dict[str, Rule] = field(default_factory=dict)


def parse_rules(declared: list[Any], problems: Problems) -> list[Rule]:
    """Returns the rules declared under init.rules, each checked for a known function and valid args."""
    functions = init_functions()
    rules = []
    for index, body in enumerate(declared):
        key = f"init.rules[{index}]"
        if not isinstance(body, dict):
            problems.add(key, f"expected a mapping like {{match: '*.weight', fn: xavier_uniform_}}, got {body!r}")
            continue
        fn = body.get("fn")
        if not isinstance(fn, str):
            problems.add(f"{key}.fn", f"missing: name an init function ({', '.join(sorted(functions))})")
            continue
        if fn not in functions:
            problems.add(f"{key}.fn", f"unknown init function {fn!r};{suggest(fn, functions) or ' available: ' + ', '.join(sorted(functions))}")
            continue
        args = {k: v for k, v in body.items() if k not in SELECTOR_KEYS}
        args = _resolve_gain(args, f"{key}.gain", problems)
        _check_args(functions[fn], fn, args, key, problems)
        rule = _selector(index, fn, args, body, key, problems)
        if rule is not None:
            rules.append(rule)
    return rules


def _resolve_gain(args: dict, key: str, problems: Problems) -> dict:
    # `gain: relu` or `gain: {nonlinearity: leaky_relu, param: 0.2}` -> a number via calculate_gain.
    gain = args.get("gain")
    if isinstance(gain, (int, float)) or gain is None or gain == "auto":
        return args
    name, param = (gain.get("nonlinearity"), gain.get("param")) if isinstance(gain, dict) else (gain, None)
    try:
        return {**args, "gain": nn.init.calculate_gain(name, param)}
    except (ValueError, TypeError) as error:
        known = ["linear", "conv1d", "conv2d", "conv3d", "sigmoid", "tanh", "relu", "leaky_relu", "selu"]
        problems.add(key, f"{error};{suggest(str(name), known) or ' known: ' + ', '.join(known)}")
        return args


def _check_args(fn: Callable, name: str, args: dict, key: str, problems: Problems) -> None:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    accepted = [p for p in signature.parameters if p not in ("tensor", "generator")]
    for arg in args:
        if arg not in signature.parameters or arg in ("tensor", "generator"):
            problems.add(f"{key}.{arg}", f"{name} takes no argument {arg!r};{suggest(arg, accepted) or ' it takes: ' + (', '.join(accepted) or 'none')}")
    for param in list(signature.parameters.values())[1:]:
        if param.default is param.empty and param.kind == param.POSITIONAL_OR_KEYWORD and param.name not in args:
            problems.add(f"{key}.{param.name}", f"missing: {name} requires `{param.name}`")


def _selector(index: int, fn: str, args: dict, body: dict, key: str, problems: Problems) -> Rule | None:
    match = body.get("match", "*")
    patterns = tuple(match) if isinstance(match, list) else (str(match),)
    regex = None
    if body.get("regex") is not None:
        try:
            regex = re.compile(str(body["regex"]))
        except re.error as error:
            problems.add(f"{key}.regex", f"invalid regular expression {body['regex']!r}: {error}")
            return None
    modules = body.get("module") or ()
    modules = (modules,) if isinstance(modules, str) else tuple(modules)
    kind = body.get("kind")
    if kind is not None and kind not in KINDS:
        problems.add(f"{key}.kind", f"expected one of {', '.join(KINDS)}, got {kind!r}")
        return None
    return Rule(index, fn, tuple(args.items()), patterns, regex, modules, kind, bool(body.get("optional", False)))


def plan_init(model: nn.Module, init_cfg: Any, problems: Problems) -> InitPlan:
    """Returns which rule sets each tensor. Later rules win; a tied tensor must get one answer."""
    rules = parse_rules(list(init_cfg.rules), problems)
    plan = InitPlan(rules)
    used: set[int] = set()
    for entry in tensor_index(model):
        per_alias = {name: _last_rule(rules, entry, name) for name in entry.names}
        chosen = {name: rule for name, rule in per_alias.items() if rule is not None}
        for rule in chosen.values():
            used.add(rule.index)
        if not chosen:
            if init_cfg.strict and entry.kind == "parameter":
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
        plan.assignment[entry.name] = max(chosen.values(), key=lambda r: r.index)
    for rule in rules:
        if rule.index not in used and not rule.optional:
            what = rule.regex.pattern if rule.regex else ", ".join(rule.patterns)
            problems.add(f"init.rules[{rule.index}]", f"selects no tensor ({what}); fix the selector or mark it `optional: true`")
    return plan


def _last_rule(rules: list[Rule], entry: TensorEntry, name: str) -> Rule | None:
    winner = None
    for rule in rules:
        if rule.selects(entry, name):
            winner = rule
    return winner


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
    siblings = list(model.get_submodule(parent_path).named_children())
    names = [name for name, _ in siblings]
    if local not in names or names.index(local) + 1 == len(siblings):
        return 1.0
    following = siblings[names.index(local) + 1][1]
    name = FOLLOWING_GAIN.get(type(following).__name__)
    if name is None:
        return 1.0
    return nn.init.calculate_gain(name, getattr(following, "negative_slope", None))


@torch.no_grad()
def apply_init(model: nn.Module, plan: InitPlan, seed: int, batch: torch.Tensor | None = None) -> dict[str, Provenance]:
    """Applies the plan on the model's current (CPU) device; returns tensor name -> provenance."""
    generator = torch.Generator().manual_seed(seed)
    functions = init_functions()
    provenance: dict[str, Provenance] = {}
    lsuv: list[tuple[TensorEntry, Rule]] = []
    for entry in tensor_index(model):
        rule = plan.assignment.get(entry.name)
        if rule is None:
            provenance[entry.name] = Provenance("pytorch default" if entry.role != "buffer" else "module buffer")
            continue
        fn, kwargs, label = functions[rule.fn], dict(rule.args), rule.label
        if rule.fn == "lsuv":
            kwargs = {}  # tol and max_iters drive the rescaling below; the start is plain orthogonal
            lsuv.append((entry, rule))
        if kwargs.get("gain") == "auto":
            kwargs["gain"] = following_gain(model, entry.name)
            label += f" (gain {kwargs['gain']:.4g})"
        if "generator" in inspect.signature(fn).parameters:
            kwargs["generator"] = generator
        fn(entry.tensor, **kwargs)
        provenance[entry.name] = Provenance(label, predicted_std(rule.fn, kwargs, entry.tensor))
    if lsuv:
        if batch is None:
            raise ValueError("lsuv needs a batch of training data")
        _lsuv_rescale(model, lsuv, batch)
    return provenance


def _lsuv_rescale(model: nn.Module, targets: list[tuple[TensorEntry, Rule]], batch: torch.Tensor) -> None:
    """Mishkin & Matas (2016): scale each selected layer, in forward order, to unit output variance."""
    owners = {id(model.get_submodule(e.name.rpartition(".")[0])): (e, r) for e, r in targets}
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


def predicted_std(fn: str, args: dict[str, Any], tensor: torch.Tensor) -> float | None:
    """Returns the std the scheme `fn(**args)` predicts for this tensor, where it has one."""
    fan_in, fan_out = _fans(tensor)
    if fn == "lsuv":
        return None  # data-dependent
    if fn == "normal_":
        return float(args.get("std", 1.0))
    if fn == "trunc_normal_":
        return _truncated_normal_std(float(args.get("mean", 0.0)), float(args.get("std", 1.0)), float(args.get("a", -2.0)), float(args.get("b", 2.0)))
    if fn == "uniform_":
        return (float(args.get("b", 1.0)) - float(args.get("a", 0.0))) / math.sqrt(12)
    if fn in ("constant_", "zeros_", "ones_"):
        return 0.0
    if fn in ("xavier_uniform_", "xavier_normal_") and fan_in:
        return float(args.get("gain", 1.0)) * math.sqrt(2.0 / (fan_in + fan_out))
    if fn in ("kaiming_uniform_", "kaiming_normal_") and fan_in:
        gain = nn.init.calculate_gain(args.get("nonlinearity", "leaky_relu"), args.get("a", 0))
        fan = fan_in if args.get("mode", "fan_in") == "fan_in" else fan_out
        return gain / math.sqrt(fan)
    if fn == "orthogonal_" and tensor.dim() >= 2:
        rows = tensor.shape[0]
        return float(args.get("gain", 1.0)) / math.sqrt(max(rows, tensor.numel() // rows))
    return None


def _truncated_normal_std(mean: float, std: float, a: float, b: float) -> float:
    """Returns the std of N(mean, std) truncated to [a, b]."""
    normal = torch.distributions.Normal(0.0, 1.0)
    alpha, beta = torch.tensor((a - mean) / std), torch.tensor((b - mean) / std)
    z = normal.cdf(beta) - normal.cdf(alpha)
    pdf = lambda t: normal.log_prob(t).exp()
    variance = 1 + (alpha * pdf(alpha) - beta * pdf(beta)) / z - ((pdf(alpha) - pdf(beta)) / z) ** 2
    return float(std * variance.sqrt())


def _fans(tensor: torch.Tensor) -> tuple[int, int]:
    if tensor.dim() < 2:
        return 0, 0
    receptive = tensor[0][0].numel() if tensor.dim() > 2 else 1
    return tensor.shape[1] * receptive, tensor.shape[0] * receptive
