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
from runner.model.tensors import Declarations, apply_declarations
from runner.registry.layers import Graph, Residual
from runner.registry.tables import layer_types
from runner.spec.types import LayerSpec, ModelSpec, TensorSpec, is_graph, output_of, wiring


def build_model(model: ModelSpec, problems: Problems | None = None) -> nn.Module:
    """Returns the module tree of a model spec on the current default device: an nn.Sequential
    for a chain, a Graph when layers are wired by name or the model owns tensors.

    Problems (a constructor that refuses its arguments, a `shared` path that names no earlier
    layer) are added to `problems` when given, else raised as one ConfigError.
    """
    collected = problems if problems is not None else Problems()
    root = _container(model.layers, model.tensors, model.output, "", {}, collected, residual=False)
    if problems is None:
        collected.raise_if_any()
    return root


def _container(layers: tuple[LayerSpec, ...], tensors: tuple[TensorSpec, ...], output: str | None, path: str,
               built: dict[str, nn.Module], problems: Problems, residual: bool) -> nn.Module:
    prefix = f"{path}." if path else ""
    if not is_graph(layers, tensors, output):
        chain = Residual() if residual else nn.Sequential()  # the fast path: no name lookups per step
        for layer in layers:
            chain.add_module(layer.name, _build_layer(layer, prefix + layer.name, built, problems))
        return chain
    graph = Graph(output_of(layers, output), residual)
    for tensor in tensors:
        _register_tensor(graph, tensor)
    for layer, reads in wiring(layers):
        module = _build_layer(layer, prefix + layer.name, built, problems)
        if reads is None:  # call: false: registered, never called
            graph.add_module(layer.name, module)
        else:
            graph.add_step(layer.name, module, reads)
    return graph


def _register_tensor(owner: nn.Module, tensor: TensorSpec) -> None:
    # Zeros until an init rule sets it: a declared tensor has no constructor default.
    value = torch.zeros(tensor.shape)
    if tensor.kind == "buffer":
        owner.register_buffer(tensor.name, value, persistent=tensor.persistent)
    else:
        owner.register_parameter(tensor.name, nn.Parameter(value, requires_grad=tensor.kind == "parameter"))


def materialize(model_spec: ModelSpec, declarations: Declarations, seed: int) -> nn.Module:
    """Returns the real CPU model: constructors' default init drawn from `seed`, declarations applied.

    The global RNG is seeded for the constructors and then restored: the caller's stream is untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(model_spec)
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
    if not layer.numbered:
        module = _construct(layer, path, built, problems)
    else:
        module = nn.Sequential()
        for index in range(layer.repeat):
            module.add_module(str(index), _construct(layer.copy(index), f"{path}.{index}", built, problems))
    built[path] = module
    return module


def _construct(layer: LayerSpec, path: str, built: dict[str, nn.Module], problems: Problems) -> nn.Module:
    cls = layer_types()[layer.type]  # type: ignore[index]
    if layer.children:
        return _container(layer.children, layer.tensors, layer.output, path, built, problems, residual=cls is Residual)
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
