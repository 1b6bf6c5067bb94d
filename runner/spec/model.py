"""The model grammar: layers, containers, `repeat` and its overrides, `shared` reuses, ties, buffers and
the other model globs, parsed into a ModelSpec."""

from __future__ import annotations

import dataclasses
from typing import Any

from omegaconf import ListConfig

from runner.errors import Problems, suggest
from runner.registry.tables import CONTAINERS, layer_types
from runner.spec.arguments import check_constructor_args
from runner.spec.common import parse_globs
from runner.spec.graph import check_graph, module_attributes, parse_inputs, parse_output, parse_tensors
from runner.spec.inplace import InPlace
from runner.spec.types import INPUT, BufferSpec, LayerSpec, ModelSpec, TieSpec

_LAYER_KEYS = ("type", "shared", "repeat", "override", "layers", "inputs", "tensors", "output", "call")
_CONTAINER_KEYS = ("type", "repeat", "override", "layers", "inputs", "tensors", "output", "call")


def parse_model(model: dict, problems: Problems) -> ModelSpec:
    tensors = parse_tensors(model.get("tensors") or {}, "model.tensors", problems)
    layers = parse_layers(model.get("layers") or {}, "model.layers", problems)
    output = parse_output(model.get("output"), "model.output", problems)
    check_graph(layers, tensors, output, "model", problems)
    if not any(p.key.startswith("model.layers") for p in problems.items):
        InPlace(layers, problems).check(layers, tensors, output, residual=False, top=True)
    return ModelSpec(
        name=str(model.get("name")),
        layers=layers,
        ties=_parse_ties(model.get("ties") or [], problems),
        buffers=_parse_buffers(model.get("buffers") or [], problems),
        frozen=parse_globs(model.get("frozen") or [], "model.frozen", problems),
        tensors=tensors,
        output=output,
        eval_modules=parse_globs(model.get("eval_modules") or [], "model.eval_modules", problems),
    )


def parse_layers(declared: Any, key: str, problems: Problems) -> tuple[LayerSpec, ...]:
    """Returns the layer specs declared under `key` (a mapping of name -> layer), in order."""
    if not isinstance(declared, dict) or not declared:
        problems.add(key, "expected a non-empty mapping of layer name -> {type: ..., args...}")
        return ()
    specs = []
    for name, body in declared.items():
        if isinstance(name, int) and not isinstance(name, bool) and str(name) in declared:
            # YAML's `0:` is a number; an override such as model.layers.0.stride=2 adds the text '0' beside it.
            problems.add(f"{key}.{name}", f"layer {name} is given both as the number {name} and as the text '{name}' (a command-line "
                                          f"override names the text): quote the key in the YAML file ('{name}': ...)")
        elif (spec := _parse_layer(str(name), body, f"{key}.{name}", problems)) is not None:
            specs.append(spec)
    return tuple(specs)


def layer_name_ok(name: str) -> bool:
    """True for an identifier or a non-negative integer written plainly ('0', '12'): torchvision's and
    Hugging Face's numbered children (`layer1.0.conv1`) are names too."""
    return name.isidentifier() or (name.isdigit() and str(int(name)) == name)


def _parse_layer(name: str, body: Any, key: str, problems: Problems) -> LayerSpec | None:
    if not layer_name_ok(name):
        problems.add(key, f"layer name {name!r} must be an identifier (letters, digits, '_'; no dots) or a number such as '0'")
        return None
    if name == INPUT:
        problems.add(key, f"{INPUT!r} is reserved: in `inputs:` it names the model's (or the container's) input")
        return None
    if name in module_attributes():
        problems.add(key, f"layer name {name!r} is an attribute of every module (torch.nn.Module.{name}); pick another name")
        return None
    if not isinstance(body, dict):
        problems.add(key, f"expected a mapping like {{type: Linear, in_features: 4, out_features: 8}}, got {body!r}")
        return None
    if "override" in body and "shared" not in body:
        return _parse_overrides(name, body, key, problems)
    repeat = body.get("repeat", 1)
    if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
        problems.add(f"{key}.repeat", f"expected a positive integer, got {repeat!r}")
        repeat = 1
    inputs = parse_inputs(body.get("inputs"), f"{key}.inputs", problems)
    if repeat > 1 and inputs is not None and len(inputs) > 1:
        problems.add(f"{key}.repeat", f"a repeated layer passes one value from copy to copy; it cannot take {len(inputs)} inputs")
    called = _parse_call(body, key, inputs, problems)
    if "shared" in body:
        return _parse_shared(name, body, key, repeat, inputs, problems)

    type_name = body.get("type")
    types = layer_types()
    if not isinstance(type_name, str):
        problems.add(f"{key}.type", "missing: every layer needs `type: <layer class>` or `shared: <earlier layer>`")
        return None
    if type_name not in types:
        hint = suggest(type_name, types) or " see docs/config.md for the registry; a class of your own needs runner.register_layer or a `runner.layers` entry point"
        problems.add(f"{key}.type", f"unknown layer type {type_name!r};{hint}")
        return None
    if type_name in CONTAINERS:
        for arg in sorted(set(body) - set(_CONTAINER_KEYS)):
            problems.add(f"{key}.{arg}", f"{type_name} takes only {', '.join(f'`{k}`' for k in _CONTAINER_KEYS[1:])}")
        if inputs is not None and len(inputs) != 1:
            problems.add(f"{key}.inputs", f"a container takes one input, got {len(inputs)}")
        tensors = parse_tensors(body.get("tensors") or {}, f"{key}.tensors", problems)
        children = parse_layers(body.get("layers"), f"{key}.layers", problems)
        output = parse_output(body.get("output"), f"{key}.output", problems)
        check_graph(children, tensors, output, key, problems)
        return LayerSpec(name, key, type_name, (), children, repeat, None, inputs, tensors, output, called, numbered="repeat" in body)
    for arg in ("layers", "tensors", "output"):
        if arg in body:
            problems.add(f"{key}.{arg}", f"only the containers {' and '.join(CONTAINERS)} have `{arg}`; {type_name} does not")
    args = {k: _plain(v) for k, v in body.items() if k not in _LAYER_KEYS}
    check_constructor_args(types[type_name], args, key, problems)
    return LayerSpec(name, key, type_name, tuple(args.items()), (), repeat, None, inputs, called=called, numbered="repeat" in body)


def _parse_overrides(name: str, body: dict, key: str, problems: Problems) -> LayerSpec | None:
    """A repeated layer whose copies differ: `override` maps a copy's index to settings merged into
    that copy's body (the first block of a ResNet stage downsamples: {'0': {layers: {conv1: {stride: 2}}}})."""
    declared = body["override"]
    base_body = {k: v for k, v in body.items() if k != "override"}
    base = _parse_layer(name, base_body, key, problems)
    if base is None:
        return None
    repeat = base.repeat
    if not base.numbered:
        problems.add(f"{key}.override", "only a repeated layer (repeat: N) has copies to override")
        return base
    if not isinstance(declared, dict) or not declared:
        problems.add(f"{key}.override", f"expected a mapping of copy index -> settings, such as {{'0': {{stride: 2}}}}, got {declared!r}")
        return base
    variants: dict[int, LayerSpec] = {}
    for index, settings in declared.items():
        where = f"{key}.override.{index}"
        number = int(index) if isinstance(index, int) or (isinstance(index, str) and index.isdigit()) else None
        if isinstance(index, bool) or number is None or not 0 <= number < repeat:
            problems.add(where, f"expected a copy index from 0 to {repeat - 1}, got {index!r}")
            continue
        if number in variants:
            problems.add(where, f"copy {number} is overridden twice")
            continue
        if not isinstance(settings, dict):
            problems.add(where, f"expected a mapping of settings merged into copy {number}, got {settings!r}")
            continue
        fixed = sorted(set(settings) & {"repeat", "override", "inputs", "call", "shared"})
        for setting in fixed:
            problems.add(f"{where}.{setting}", f"`{setting}` is the repeated layer's own; a copy can change its type, arguments and layers")
        if fixed:
            continue
        found = Problems()
        variant = _parse_layer(name, _merged(base_body, settings), where, found)
        ours = {(p.key, p.message) for p in problems.items}
        for problem in found.items:  # what the base already reported is not reported again per copy
            if (problem.key.replace(where, key, 1), problem.message) not in ours:
                problems.add(problem.key, problem.message)
        if variant is not None:
            variants[number] = variant
    return dataclasses.replace(base, variants=tuple(sorted(variants.items())))


def _merged(base: dict, settings: dict) -> dict:
    """Returns `base` with `settings` merged in: mappings key by key, any other value replaced."""
    merged = dict(base)
    for k, v in settings.items():
        merged[k] = _merged(merged[k], v) if isinstance(merged.get(k), dict) and isinstance(v, dict) else v
    return merged


def _parse_call(body: dict, key: str, inputs: tuple[str, ...] | None, problems: Problems) -> bool:
    """`call: false`: the layer is registered (its tensors are the model's) but forward never calls it."""
    called = body.get("call", True)
    if not isinstance(called, bool):
        problems.add(f"{key}.call", f"expected true or false, got {called!r}")
        return True
    if not called and inputs is not None:
        problems.add(f"{key}.inputs", "a layer with `call: false` is never called, so it reads nothing; drop `inputs`")
    if not called and "shared" in body:
        problems.add(f"{key}.call", "a `shared` layer is another call of an earlier module; with `call: false` it would be nothing")
    return called


def _parse_shared(name: str, body: dict, key: str, repeat: int, inputs: tuple[str, ...] | None, problems: Problems) -> LayerSpec | None:
    target = body["shared"]
    extra = sorted(set(body) - {"shared", "inputs", "call"})
    if extra:
        problems.add(f"{key}.{extra[0]}", "a `shared` layer reuses an earlier module as it is; it takes only `inputs`")
    if repeat != 1:
        problems.add(f"{key}.repeat", "a `shared` layer cannot repeat")
    if not isinstance(target, str) or not target:
        problems.add(f"{key}.shared", f"expected the dotted path of an earlier layer, got {target!r}")
        return None
    return LayerSpec(name, key, None, shared=target, inputs=inputs)


def _plain(value: Any) -> Any:
    # YAML lists arrive as lists; torch layer constructors want tuples (kernel_size, unflattened_size).
    if isinstance(value, (list, ListConfig)):
        return tuple(_plain(v) for v in value)
    return value


def _parse_ties(declared: list, problems: Problems) -> tuple[TieSpec, ...]:
    ties = []
    for index, entry in enumerate(declared):
        key = f"model.ties[{index}]"
        if not isinstance(entry, dict) or not {"target", "source"} <= set(entry):
            problems.add(key, "expected {target: <tensor name>, source: <tensor name>, transpose: false | true | [i, j]}")
            continue
        for name in sorted(set(entry) - {"target", "source", "transpose"}):
            problems.add(f"{key}.{name}", f"unknown key;{suggest(name, ['target', 'source', 'transpose']) or ' a tie takes target, source, transpose'}")
        transpose = entry.get("transpose", False)
        if isinstance(transpose, list) and len(transpose) == 2 and all(isinstance(d, int) and not isinstance(d, bool) for d in transpose) and transpose[0] != transpose[1]:
            transpose = (transpose[0], transpose[1])
        elif not isinstance(transpose, bool):
            problems.add(f"{key}.transpose", f"expected true (a 2-D transpose), false, or two different dims to swap such as [2, 3]; got {transpose!r}")
            transpose = False
        ties.append(TieSpec(str(entry["target"]), str(entry["source"]), transpose))
    return tuple(ties)


def _parse_buffers(declared: list, problems: Problems) -> tuple[BufferSpec, ...]:
    buffers = []
    for index, entry in enumerate(declared):
        key = f"model.buffers[{index}]"
        if isinstance(entry, str):
            entry = {"match": entry}
        if not isinstance(entry, dict) or "match" not in entry or set(entry) - {"match", "persistent"}:
            problems.add(key, "expected {match: <glob>, persistent: true}")
            continue
        persistent = entry.get("persistent", True)
        if not isinstance(persistent, bool):
            problems.add(f"{key}.persistent", f"expected true or false, got {persistent!r}")
        buffers.append(BufferSpec(str(entry["match"]), persistent is not False))
    return tuple(buffers)
