"""Constructor-argument checks: every argument a layer is given is one its class takes, of a type it admits."""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any

from runner.errors import Problems, suggest


def check_constructor_args(cls: type, args: dict, key: str, problems: Problems) -> None:
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
