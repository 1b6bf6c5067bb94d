"""Plan -> nn.Module: layers by declared name, nested containers, repeats and shared modules.

Parameter names follow the declared names (`blocks.0.fc1.weight`), so init rules, ties and
optimizer groups can address them with globs. `build_model` is used twice: on the meta device by
the plan (shapes, no memory), and by `materialize` for the real model, which then receives the
plan's resolved declarations without matching anything again.
"""

from __future__ import annotations

import torch
from torch import nn

from runner.errors import Problems, suggest
from runner.registry import layer_types
from runner.spec import LayerSpec
from runner.tensors import Declarations, apply_declarations


def build_model(layers: tuple[LayerSpec, ...], problems: Problems | None = None) -> nn.Sequential:
    """Returns the module tree for these layers on the current default device.

    Problems (a constructor that refuses its arguments, a `shared` path that names no earlier
    layer) are added to `problems` when given, else raised as one ConfigError.
    """
    collected = problems if problems is not None else Problems()
    built: dict[str, nn.Module] = {}
    root = nn.Sequential()
    for layer in layers:
        root.add_module(layer.name, _build_layer(layer, layer.name, built, collected))
    if problems is None:
        collected.raise_if_any()
    return root


def materialize(layers: tuple[LayerSpec, ...], declarations: Declarations, seed: int) -> nn.Module:
    """Returns the real CPU model: constructors' default init drawn from `seed`, declarations applied.

    The global RNG is seeded for the constructors and then restored: the caller's stream is untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(layers)
    apply_declarations(model, declarations)
    return model


def _build_layer(layer: LayerSpec, path: str, built: dict[str, nn.Module], problems: Problems) -> nn.Module:
    if layer.shared is not None:
        module = built.get(layer.shared)
        if module is None:
            hint = suggest(layer.shared, built) or f" earlier layers: {', '.join(built) or 'none'}"
            problems.add(f"{layer.key}.shared", f"{layer.shared!r} is not an earlier layer (a layer can only reuse one declared before it);{hint}")
            module = nn.Identity()
        built[path] = module
        return module
    if layer.repeat == 1:
        module = _construct(layer, path, built, problems)
    else:
        module = nn.Sequential()
        for index in range(layer.repeat):
            module.add_module(str(index), _construct(layer, f"{path}.{index}", built, problems))
    built[path] = module
    return module


def _construct(layer: LayerSpec, path: str, built: dict[str, nn.Module], problems: Problems) -> nn.Module:
    cls = layer_types()[layer.type]  # type: ignore[index]
    if layer.children:
        module = cls()
        for child in layer.children:
            module.add_module(child.name, _build_layer(child, f"{path}.{child.name}", built, problems))
        return module
    try:
        return cls(**dict(layer.args))
    except Exception as error:  # a constructor's own check, e.g. nhead not dividing d_model
        problems.add(layer.key, f"{layer.type}({_format_args(layer.args)}) failed: {_first_line(error)}")
        return nn.Identity()


def _format_args(args: tuple[tuple[str, object], ...]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
