"""The init functions a rule may name, and what each accepts: its arguments, their value domains,
and the tensor dimensionality it needs.

torch.nn.init's functions, the project's own (`piecewise`, `lsuv`, `sinusoidal`) and functions registered with
`register_init` or by installed plugins (entry-point group `runner.inits`); nothing else. The
domains are checked before any tensor exists, so a rule such as `{fn: normal_, std: -1}` is a
config error naming its key, not a traceback in the middle of init.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable

import torch
from torch import nn

from runner.errors import suggest
from runner.registry.layers import sinusoidal_encoding
from runner.registry.modifiers import FILL_VALUE, MODIFIERS, is_fill_value
from runner.registry.tables import add_plugin_group, load_plugins, qualified_name

TORCH_INIT = (
    "uniform_", "normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_", "xavier_uniform_",
    "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "trunc_normal_", "orthogonal_", "sparse_",
)
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


_REGISTERED: dict[str, Callable[..., Any]] = {"piecewise": piecewise_, "lsuv": lsuv_, "sinusoidal": sinusoidal_, "pretrained": pretrained}


def register_init(name: str, fn: Callable[..., Any]) -> None:
    """Makes `fn(tensor, **args)` nameable as `fn: <name>` in init rules (it may take `generator=`).

    Registering the function a name already means is a no-op; a name that means another function
    (torch.nn.init's, the project's, a modifier, an earlier registration) is refused.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"init function name {name!r} must be a Python identifier")
    if not callable(fn):
        raise ValueError(f"init function {name!r} must be callable as fn(tensor, **args), got {fn!r}")
    if name in TORCH_INIT:
        raise ValueError(f"{name!r} is a torch.nn.init function and cannot be replaced")
    if name in MODIFIERS:
        raise ValueError(f"{name!r} is a modifier rule (fn: {name}) and cannot be replaced")
    if _REGISTERED.get(name, fn) is not fn:
        raise ValueError(f"init function {name!r} already means {qualified_name(_REGISTERED[name])}; it cannot also mean {qualified_name(fn)}")
    _REGISTERED[name] = fn


add_plugin_group("runner.inits", register_init)


def init_functions() -> dict[str, Callable[..., Any]]:
    """Returns every function an init rule may name (plugins loaded first)."""
    load_plugins()
    return {**{name: getattr(nn.init, name) for name in TORCH_INIT}, **_REGISTERED}


# Tensor dimensionality each function needs: (fewest, most) dims.
DIMS: dict[str, tuple[int, int]] = {
    "xavier_uniform_": (2, 99), "xavier_normal_": (2, 99), "kaiming_uniform_": (2, 99), "kaiming_normal_": (2, 99),
    "orthogonal_": (2, 99), "lsuv": (2, 99), "eye_": (2, 2), "sparse_": (2, 2), "dirac_": (3, 5), "sinusoidal": (2, 99),
}


def dims_needed(fn: str) -> str:
    """Returns the dimensionality `fn` needs, in words ('at least 2 dims'), or '' when any will do."""
    low, high = DIMS.get(fn, (0, 99))
    if (low, high) == (0, 99):
        return ""
    return f"exactly {low} dims" if low == high else f"{low} to {high} dims" if high < 99 else f"at least {low} dims"


def fits_dims(fn: str, ndim: int) -> bool:
    """True when `fn` can initialize a tensor of `ndim` dims."""
    low, high = DIMS.get(fn, (0, 99))
    return low <= ndim <= high


def argument_problems(fn: str, args: dict[str, Any]) -> list[tuple[str, str]]:
    """Returns (argument, what is wrong) for each argument of `fn` outside its signature or domain."""
    function = init_functions()[fn]
    found = _signature_problems(fn, function, args)
    if found:
        return found
    for arg, value in args.items():
        check = _DOMAINS.get((fn, arg)) or _DOMAINS.get(("*", arg))
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


# (function or '*', argument) -> check(value, all args) returning a message or None. `gain` arrives resolved.
_DOMAINS: dict[tuple[str, str], Callable[[Any, dict], str | None]] = {
    ("*", "std"): _positive,
    ("*", "mean"): _finite,
    ("*", "gain"): _gain,
    ("*", "val"): _finite,
    ("constant_", "val"): _fill_value,  # a mask of -inf
    ("uniform_", "a"): _finite,
    ("uniform_", "b"): _above("a", 0.0),
    ("trunc_normal_", "a"): _finite,
    ("trunc_normal_", "b"): _above("a", -2.0),
    ("kaiming_uniform_", "a"): _finite,
    ("kaiming_normal_", "a"): _finite,
    ("*", "mode"): _one_of(("fan_in", "fan_out")),
    ("*", "nonlinearity"): _one_of(NONLINEARITIES),
    ("sparse_", "sparsity"): _fraction,
    ("dirac_", "groups"): _positive_int,
    ("piecewise", "low"): lambda v, a: None if _number(v) and v >= 0 else f"expected a number >= 0, got {v!r}",
    ("piecewise", "high"): _above("low", 5.0),
    ("sinusoidal", "base"): lambda v, a: None if _number(v) and v > 1 else f"expected a number > 1, got {v!r}",
    ("pretrained", "path"): lambda v, a: None if isinstance(v, str) and v else f"expected the path of a .safetensors file, run directory or checkpoint, got {v!r}",
    ("pretrained", "rename"): lambda v, a: None if v is None or (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(p, str) for p in v)) else
        f"expected [<prefix in this model>, <prefix in the file>] (e.g. [fc1, '0']; '' for none), got {v!r}",
    ("lsuv", "tol"): _positive,
    ("lsuv", "max_iters"): _positive_int,
}
