"""Spec -> nn.Module: layers by declared name, nested containers, repeats and shared modules.

Parameter names follow the declared names (`blocks.0.fc1.weight`), so init rules, ties and
optimizer groups can address them with globs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from runner.errors import Problems, suggest
from runner.registry import layer_types
from runner.spec import LayerSpec

if TYPE_CHECKING:
    from runner.spec import RunSpec


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


def example_input(spec: "RunSpec", batch: int, device: torch.device | str) -> torch.Tensor:
    """Returns a zero batch shaped like the data the model will see."""
    dtype = torch.long if spec.data.task == "language_model" else torch.float32
    return torch.zeros(batch, spec.data.num_features, dtype=dtype, device=device)


def expected_output_shape(spec: "RunSpec", batch: int) -> tuple[int, ...]:
    """Returns the output shape the loss needs for a batch of this size."""
    rows = batch * spec.data.num_features if spec.data.task == "language_model" else batch
    return (rows, spec.data.num_outputs)


def check_on_meta(spec: "RunSpec", problems: Problems) -> None:
    """Builds the model on the meta device (shapes, no memory) and checks tensor declarations,
    init rules, optimizer groups, then a forward pass."""
    from runner.initialization import plan_init
    from runner.optim import assign_groups, trainable
    from runner.tensors import declare_tensors

    with torch.device("meta"):
        model = build_model(spec.layers, problems)
    if problems:
        return
    declare_tensors(model, spec.model, problems)
    if problems:
        return
    plan_init(model, spec.init, problems)
    assign_groups(trainable(model), spec.optim, problems)
    _check_forward(model, spec, problems)


def _check_forward(model: nn.Module, spec: "RunSpec", problems: Problems) -> None:
    """Runs a batch of 2 through the model, in eval mode, to check that layer shapes chain.

    The meta model gets uninitialized CPU storage (to_empty): an eval forward only reads it, so
    the pages are never committed. (A forward on meta would do, but its `linear` kernel imports
    torch._dynamo: 2 s of start-up.) This replaces the model's tensors: it must run last.
    """
    model.to_empty(device="cpu").eval()
    running: list[tuple[str, tuple]] = []  # (layer, shape of its input), in call order
    hooks = [
        module.register_forward_pre_hook(lambda _m, args, name=name: running.append((name, _shape(args))))
        for name, module in model.named_modules()
        if name
    ]
    batch = 2
    x = example_input(spec, batch, "cpu")
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as error:
        if running:
            name, shape = running[-1]
            where = f"layer {name!r} ({type(model.get_submodule(name)).__name__}) failed on its input of shape {shape}"
        else:
            where = f"the model failed on input of shape {tuple(x.shape)}"
        problems.add("model.layers", f"{where}: {_first_line(error)}")
        return
    finally:
        for hook in hooks:
            hook.remove()
    want = expected_output_shape(spec, batch)
    if tuple(out.shape) != want:
        problems.add(
            "model.layers",
            f"the model's output has shape {tuple(out.shape)} for input {tuple(x.shape)}; the {spec.data.task} "
            f"task needs {want} (data.num_outputs={spec.data.num_outputs})",
        )


def _shape(args: tuple) -> tuple:
    return tuple(args[0].shape) if args and isinstance(args[0], torch.Tensor) else ()


def _format_args(args: tuple[tuple[str, object], ...]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
