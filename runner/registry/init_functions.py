"""The init functions a rule may name: one table (INIT) of entries that carry the function and what the
spec and the tensor table need to know about it: its arguments' value domains, the tensor dimensionality
it needs, the std it predicts, and whether it needs a batch of data (LSUV) or reads a file (pretrained).

torch.nn.init's functions, the project's own (`piecewise`, `lsuv`, `sinusoidal`) and functions registered with
`register_init` or by installed plugins (entry-point group `runner.inits`); nothing else. The
domains are checked before any tensor exists, so a rule such as `{fn: normal_, std: -1}` is a
config error naming its key, not a traceback in the middle of init.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from runner.errors import suggest
from runner.registry.layers import sinusoidal_encoding
from runner.registry.modifiers import FILL_VALUE, MODIFIERS, is_fill_value
from runner.registry.tables import add_plugin_group, load_plugins, qualified_name

NONLINEARITIES = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                  "conv_transpose3d", "sigmoid", "tanh", "relu", "leaky_relu", "selu")


def piecewise_(tensor: torch.Tensor, low: float = 5.0, high: float = 10.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """The source notes' custom law: U(low, high) w.p. 1/4, 0 w.p. 1/2, U(-high, -low) w.p. 1/4 (for low = high / 2)."""
    with torch.no_grad():
        tensor.uniform_(-high, high, generator=generator)
        tensor.mul_(tensor.abs() >= low)
    return tensor


def lsuv_(tensor: torch.Tensor, tol: float = 0.1, max_iters: int = 10, generator: torch.Generator | None = None) -> torch.Tensor:
    """Orthogonal start for LSUV; the data-dependent rescaling runs after all rules (initialization.py)."""
    return nn.init.orthogonal_(tensor, generator=generator)


def sinusoidal_(tensor: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """The sinusoidal position table of 'Attention is all you need' in the last two dims
    (positions, features), repeated over any leading dims: the notes' `pe` buffer."""
    positions, features = tensor.shape[-2:]
    table = sinusoidal_encoding(positions, features, base, torch.float64)
    with torch.no_grad():
        tensor.copy_(table.to(tensor.dtype).expand_as(tensor))
    return tensor


def pretrained(tensor: torch.Tensor, path: str, rename: tuple[str, str] | None = None) -> torch.Tensor:
    """Values from a safetensors file or a run of ours (runner.pretrained finds and checks them).

    The lookup needs the tensor's name, which an init function is not given, so `apply_init`
    copies the values runner.pretrained read; this signature is what a rule's arguments are
    checked against.
    """
    raise TypeError("pretrained values are copied by runner.init.apply.apply_init, which knows each tensor's name")


Check = Callable[[Any, dict], "str | None"]  # (value, every argument) -> what is wrong, or None
Std = Callable[[dict, torch.Tensor], "float | None"]  # (arguments, tensor) -> the std the scheme predicts


@dataclass(frozen=True)
class InitFunction:
    """One init function a rule may name (`fn: <name>`): called as fn(tensor, **args), with `generator=`
    when it takes one. A plugin may register a plain function or one of these, to state the rest."""

    fn: Callable[..., Any]
    dims: tuple[int, int] = (0, 99)  # the fewest and most tensor dims it can fill
    domains: Mapping[str, Check] = field(default_factory=dict)  # per argument, before the common ones (COMMON_DOMAINS)
    std: Std | None = None  # the std it predicts for a tensor (the tensor table's predicted_std)
    needs_batch: bool = False  # finished on a batch of data after every other rule (LSUV's rescaling)
    reads_file: bool = False  # its values come from a file, found by each tensor's name (runner.init.pretrained)

    def dims_needed(self) -> str:
        """The dimensionality it needs, in words ('at least 2 dims'), or '' when any will do."""
        low, high = self.dims
        if (low, high) == (0, 99):
            return ""
        return f"exactly {low} dims" if low == high else f"{low} to {high} dims" if high < 99 else f"at least {low} dims"

    def fits(self, ndim: int) -> bool:
        low, high = self.dims
        return low <= ndim <= high


_REGISTERED: dict[str, InitFunction] = {}  # added by register_init (from code or a `runner.inits` entry point)


def register_init(name: str, fn: Callable[..., Any] | InitFunction) -> None:
    """Makes `fn(tensor, **args)` nameable as `fn: <name>` in init rules (it may take `generator=`).

    Registering the function a name already means is a no-op; a name that means another function
    (torch.nn.init's, the project's, a modifier, an earlier registration) is refused.
    """
    entry = fn if isinstance(fn, InitFunction) else InitFunction(fn)
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"init function name {name!r} must be a Python identifier")
    if not callable(entry.fn):
        raise ValueError(f"init function {name!r} must be callable as fn(tensor, **args), got {entry.fn!r}")
    if name in INIT and getattr(nn.init, name, None) is INIT[name].fn:
        raise ValueError(f"{name!r} is a torch.nn.init function and cannot be replaced")
    if name in MODIFIERS:
        raise ValueError(f"{name!r} is a modifier rule (fn: {name}) and cannot be replaced")
    known = {**INIT, **_REGISTERED}
    if name in known and known[name].fn is not entry.fn:
        raise ValueError(f"init function {name!r} already means {qualified_name(known[name].fn)}; it cannot also mean {qualified_name(entry.fn)}")
    if name not in INIT:
        _REGISTERED[name] = entry


add_plugin_group("runner.inits", register_init)


def init_functions() -> dict[str, InitFunction]:
    """Returns every init function a rule may name, by name (plugins loaded first)."""
    load_plugins()
    return {**INIT, **_REGISTERED}


def argument_problems(fn: str, args: dict[str, Any]) -> list[tuple[str, str]]:
    """Returns (argument, what is wrong) for each argument of `fn` outside its signature or domain."""
    entry = init_functions()[fn]
    found = _signature_problems(fn, entry.fn, args)
    if found:
        return found
    for arg, value in args.items():
        check = entry.domains.get(arg) or COMMON_DOMAINS.get(arg)
        message = check(value, args) if check else None
        if message:
            found.append((arg, message))
    return found


def _signature_problems(name: str, fn: Callable, args: dict[str, Any]) -> list[tuple[str, str]]:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    accepted = [p for p in list(signature.parameters)[1:] if p != "generator"]
    found = []
    for arg in args:
        if arg not in accepted:
            found.append((arg, f"{name} takes no argument {arg!r};{suggest(arg, accepted) or ' it takes: ' + (', '.join(accepted) or 'none')}"))
    for param in list(signature.parameters.values())[1:]:
        if param.default is param.empty and param.kind == param.POSITIONAL_OR_KEYWORD and param.name not in args:
            found.append((param.name, f"missing: {name} requires `{param.name}`"))
    return found


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value: Any, _args: dict) -> str | None:
    return None if _number(value) and value > 0 else f"expected a number > 0, got {value!r}"


def _finite(value: Any, _args: dict) -> str | None:
    return None if _number(value) else f"expected a finite number, got {value!r}"


def _fill_value(value: Any, _args: dict) -> str | None:
    return None if is_fill_value(value) else f"{FILL_VALUE}, got {value!r}"


def _above(other: str, default: float) -> Callable[[Any, dict], str | None]:
    def check(value: Any, args: dict) -> str | None:
        if not _number(value):
            return f"expected a finite number, got {value!r}"
        low = args.get(other, default)
        if _number(low) and value <= low:
            return f"expected a number > {other} ({low}), got {value}"
        return None

    return check


def _fraction(value: Any, _args: dict) -> str | None:
    return None if _number(value) and 0 <= value <= 1 else f"expected a number in [0, 1], got {value!r}"


def _one_of(options: tuple[str, ...]) -> Callable[[Any, dict], str | None]:
    def check(value: Any, _args: dict) -> str | None:
        return None if value in options else f"expected one of {', '.join(options)}, got {value!r};{suggest(str(value), options)}".rstrip(";")

    return check


def _gain(value: Any, _args: dict) -> str | None:
    return None if value == "auto" or (_number(value) and value >= 0) else f"expected a number >= 0, 'auto', or an activation name, got {value!r}"


def _positive_int(value: Any, _args: dict) -> str | None:
    return None if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else f"expected an integer >= 1, got {value!r}"


# Arguments that mean the same in every function that takes them. `gain` arrives resolved.
COMMON_DOMAINS: dict[str, Check] = {
    "std": _positive, "mean": _finite, "gain": _gain, "val": _finite,
    "mode": _one_of(("fan_in", "fan_out")), "nonlinearity": _one_of(NONLINEARITIES),
}


def _fans(tensor: torch.Tensor) -> tuple[int, int]:
    if tensor.dim() < 2:
        return 0, 0
    receptive = tensor[0][0].numel() if tensor.dim() > 2 else 1
    return tensor.shape[1] * receptive, tensor.shape[0] * receptive


def _truncated_normal_std(mean: float, std: float, a: float, b: float) -> float:
    """Returns the std of N(mean, std) truncated to [a, b]."""
    normal = torch.distributions.Normal(0.0, 1.0)
    alpha, beta = torch.tensor((a - mean) / std), torch.tensor((b - mean) / std)
    z = normal.cdf(beta) - normal.cdf(alpha)
    pdf = lambda t: normal.log_prob(t).exp()
    variance = 1 + (alpha * pdf(alpha) - beta * pdf(beta)) / z - ((pdf(alpha) - pdf(beta)) / z) ** 2
    return float(std * variance.sqrt())


def _xavier_std(args: dict, tensor: torch.Tensor) -> float | None:
    fan_in, fan_out = _fans(tensor)
    return float(args.get("gain", 1.0)) * math.sqrt(2.0 / (fan_in + fan_out)) if fan_in else None


def _kaiming_std(args: dict, tensor: torch.Tensor) -> float | None:
    fan_in, fan_out = _fans(tensor)
    if not fan_in:
        return None
    gain = nn.init.calculate_gain(args.get("nonlinearity", "leaky_relu"), args.get("a", 0))
    return gain / math.sqrt(fan_in if args.get("mode", "fan_in") == "fan_in" else fan_out)


def _orthogonal_std(args: dict, tensor: torch.Tensor) -> float | None:
    rows = tensor.shape[0]
    return float(args.get("gain", 1.0)) / math.sqrt(max(rows, tensor.numel() // rows))


_ZERO: Std = lambda args, tensor: 0.0
_MATRIX = (2, 99)

# Every built-in init function: torch.nn.init's and the project's own.
INIT: dict[str, InitFunction] = {
    "uniform_": InitFunction(nn.init.uniform_, domains={"a": _finite, "b": _above("a", 0.0)},
                             std=lambda args, t: (float(args.get("b", 1.0)) - float(args.get("a", 0.0))) / math.sqrt(12)),
    "normal_": InitFunction(nn.init.normal_, std=lambda args, t: float(args.get("std", 1.0))),
    "constant_": InitFunction(nn.init.constant_, domains={"val": _fill_value}, std=_ZERO),  # a mask of -inf
    "ones_": InitFunction(nn.init.ones_, std=_ZERO),
    "zeros_": InitFunction(nn.init.zeros_, std=_ZERO),
    "eye_": InitFunction(nn.init.eye_, dims=(2, 2)),
    "dirac_": InitFunction(nn.init.dirac_, dims=(3, 5), domains={"groups": _positive_int}),
    "xavier_uniform_": InitFunction(nn.init.xavier_uniform_, dims=_MATRIX, std=_xavier_std),
    "xavier_normal_": InitFunction(nn.init.xavier_normal_, dims=_MATRIX, std=_xavier_std),
    "kaiming_uniform_": InitFunction(nn.init.kaiming_uniform_, dims=_MATRIX, domains={"a": _finite}, std=_kaiming_std),
    "kaiming_normal_": InitFunction(nn.init.kaiming_normal_, dims=_MATRIX, domains={"a": _finite}, std=_kaiming_std),
    "trunc_normal_": InitFunction(nn.init.trunc_normal_, domains={"a": _finite, "b": _above("a", -2.0)},
                                  std=lambda args, t: _truncated_normal_std(float(args.get("mean", 0.0)), float(args.get("std", 1.0)),
                                                                            float(args.get("a", -2.0)), float(args.get("b", 2.0)))),
    "orthogonal_": InitFunction(nn.init.orthogonal_, dims=_MATRIX, std=_orthogonal_std),
    "sparse_": InitFunction(nn.init.sparse_, dims=(2, 2), domains={"sparsity": _fraction}),
    "piecewise": InitFunction(piecewise_, domains={"low": lambda v, a: None if _number(v) and v >= 0 else f"expected a number >= 0, got {v!r}",
                                                   "high": _above("low", 5.0)}),
    "lsuv": InitFunction(lsuv_, dims=_MATRIX, domains={"tol": _positive, "max_iters": _positive_int}, needs_batch=True),  # data-dependent: no std
    "sinusoidal": InitFunction(sinusoidal_, dims=_MATRIX, domains={"base": lambda v, a: None if _number(v) and v > 1 else f"expected a number > 1, got {v!r}"}),
    "pretrained": InitFunction(pretrained, reads_file=True, domains={
        "path": lambda v, a: None if isinstance(v, str) and v else f"expected the path of a .safetensors file, run directory or checkpoint, got {v!r}",
        "rename": lambda v, a: None if v is None or (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(p, str) for p in v)) else
        f"expected [<prefix in this model>, <prefix in the file>] (e.g. [fc1, '0']; '' for none), got {v!r}"}),
}
