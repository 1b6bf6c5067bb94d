"""Modifier rules: init rules that change the value an earlier rule (or the constructor) set.

The notes edit weights after initializing them: `weight.data[:] += 1`, `weight.data[0, 0] = 42`,
`weight.data *= weight.data.abs() >= 5`. In YAML these are rules with `fn: add`, `fill`, `scale`
or `mask`. They run after every setting rule, in the order declared, each on the tensors it
reaches; `index` narrows one to a leading slice (`index: [0, 0]` is `t[0, 0]`).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch


def _add(t: torch.Tensor, value: float) -> None:
    t.add_(value)


def _scale(t: torch.Tensor, value: float) -> None:
    t.mul_(value)


def _fill(t: torch.Tensor, value: float) -> None:
    t.fill_(value)


def _mask(t: torch.Tensor, below: float) -> None:
    t.mul_(t.abs() >= below)


# What `fill` (and constant_'s `val`) accept: an attention mask's -inf is a value, NaN never is.
FILL_VALUE = "expected a number: inf and -inf allowed (`-.inf` in a YAML file, `-inf` on the command line), NaN not"

# name -> (function of the selected slice, its one required argument)
MODIFIERS: dict[str, tuple[Callable[[torch.Tensor, float], None], str]] = {
    "add": (_add, "value"),
    "scale": (_scale, "value"),
    "fill": (_fill, "value"),
    "mask": (_mask, "below"),
}


def modifier_problems(fn: str, args: dict[str, Any]) -> list[tuple[str, str]]:
    """Returns (argument, what is wrong) for each argument of modifier `fn` that it does not take."""
    needed = MODIFIERS[fn][1]
    found = []
    for arg in sorted(set(args) - {needed, "index"}):
        found.append((arg, f"{fn} takes `{needed}` and optionally `index`, not {arg!r}"))
    value = args.get(needed)
    if needed not in args:
        found.append((needed, f"missing: {fn} needs `{needed}` (a number)"))
    elif fn == "fill" and not is_fill_value(value):  # fill may write a mask's -inf
        found.append((needed, f"{FILL_VALUE}, got {value!r}"))
    elif fn != "fill" and not (is_fill_value(value) and math.isfinite(value)):
        found.append((needed, f"expected a finite number, got {value!r}"))
    elif fn == "mask" and value < 0:
        found.append((needed, f"expected a number >= 0 (entries with |x| below it become 0), got {value!r}"))
    index = args.get("index")
    if "index" in args and not (isinstance(index, (list, tuple)) and index and all(isinstance(i, int) and not isinstance(i, bool) for i in index)):
        found.append(("index", f"expected a list of integers, a leading index such as [0, 0] (t[0, 0]), got {index!r}"))
    return found


def is_fill_value(value: Any) -> bool:
    """True for a number a tensor may be filled with: finite, inf or -inf (an attention mask's -inf,
    YAML `-.inf`), never NaN, which means nothing; a bool is not a number here."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def index_problem(index: tuple[int, ...] | None, shape: tuple[int, ...]) -> str | None:
    """Returns why `index` cannot address a tensor of this shape, or None."""
    if index is None:
        return None
    if len(index) > len(shape):
        return f"index {list(index)} has {len(index)} entries but the tensor has {len(shape)} dims"
    for dim, (i, size) in enumerate(zip(index, shape)):
        if not -size <= i < size:
            return f"index {list(index)}: {i} is out of range for dim {dim} of size {size}"
    return None


@torch.no_grad()
def apply_modifier(fn: str, args: dict[str, Any], tensor: torch.Tensor) -> None:
    """Applies one modifier rule to a tensor in place."""
    function, needed = MODIFIERS[fn]
    index = args.get("index")
    function(tensor[tuple(index)] if index else tensor, args[needed])  # basic indexing: a view
