"""The model grammar's wiring: a container's `inputs`, `output` and own `tensors`, and the check
that every input names something made before it and every value is read."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from runner.errors import Problems, suggest
from runner.registry.layers import Graph
from runner.spec.types import INPUT, LayerSpec, TensorSpec, output_of, wiring

TENSOR_KINDS = ("parameter", "frozen", "buffer")


@lru_cache(maxsize=1)
def module_attributes() -> frozenset[str]:
    """Names a layer or tensor cannot take: registering it would clash with the module's own attribute."""
    return frozenset(name for name in dir(Graph("x")) if not name.startswith("__"))


def parse_inputs(declared: Any, key: str, problems: Problems) -> tuple[str, ...] | None:
    if declared is None:
        return None
    if isinstance(declared, (str, int)) and not isinstance(declared, bool):
        declared = [declared]
    if isinstance(declared, list):  # a numbered layer read as `inputs: [0]`
        declared = [str(n) if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else n for n in declared]
    if not isinstance(declared, list) or not declared or not all(isinstance(n, str) and n for n in declared):
        problems.add(key, f"expected a non-empty list of names (earlier layers, tensors, or `input`), got {declared!r}")
        return None
    return tuple(declared)


def parse_output(declared: Any, key: str, problems: Problems) -> str | None:
    if isinstance(declared, int) and not isinstance(declared, bool) and declared >= 0:
        declared = str(declared)  # a numbered layer
    if declared is not None and (not isinstance(declared, str) or not declared):
        problems.add(key, f"expected the name of a layer or tensor, got {declared!r}")
        return None
    return declared


def parse_tensors(declared: Any, key: str, problems: Problems) -> tuple[TensorSpec, ...]:
    """Returns the tensors declared under `key`: name -> {shape: [...], kind: ..., persistent: ...}."""
    if not isinstance(declared, dict):
        problems.add(key, f"expected a mapping of tensor name -> {{shape: [1], kind: parameter}}, got {declared!r}")
        return ()
    tensors = []
    for name, body in declared.items():
        where = f"{key}.{name}"
        name = str(name)
        if not name.isidentifier() or name == INPUT:
            problems.add(where, f"tensor name {name!r} must be an identifier other than {INPUT!r}")
            continue
        if name in module_attributes():
            problems.add(where, f"tensor name {name!r} is an attribute of every module (torch.nn.Module.{name}); pick another name")
            continue
        if not isinstance(body, dict):
            problems.add(where, f"expected a mapping like {{shape: [1, 16], kind: parameter}}, got {body!r}")
            continue
        for extra in sorted(set(body) - {"shape", "kind", "persistent"}):
            problems.add(f"{where}.{extra}", f"unknown key;{suggest(str(extra), ['shape', 'kind', 'persistent']) or ' a tensor takes shape, kind, persistent'}")
        shape = body.get("shape")
        if isinstance(shape, int) and not isinstance(shape, bool):
            shape = [shape]
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
            problems.add(f"{where}.shape", f"expected a list of sizes >= 1 (e.g. [1, 65, 32]), got {shape!r}")
            continue
        kind = body.get("kind", "parameter")
        if kind not in TENSOR_KINDS:
            problems.add(f"{where}.kind", f"expected one of {', '.join(TENSOR_KINDS)}, got {kind!r};{suggest(str(kind), TENSOR_KINDS)}".rstrip(";"))
            continue
        persistent = body.get("persistent", True)
        if not isinstance(persistent, bool):
            problems.add(f"{where}.persistent", f"expected true or false, got {persistent!r}")
        elif "persistent" in body and kind != "buffer":
            problems.add(f"{where}.persistent", f"only buffers can be left out of the state_dict; this tensor is a {kind}")
        tensors.append(TensorSpec(name, where, tuple(shape), kind, persistent is not False))
    return tuple(tensors)


def check_graph(layers: tuple[LayerSpec, ...], tensors: tuple[TensorSpec, ...], output: str | None, key: str, problems: Problems) -> None:
    """Checks the wiring of one container (or the model): every input names `input`, an earlier layer
    or a tensor of this container; nothing is read before it is made (so there is no cycle); every
    layer and tensor is read by something or is the output."""
    where = "model.layers" if key == "model" else f"{key}.layers"
    names = [layer.name for layer in layers]
    tensor_names = {t.name: t for t in tensors}
    for clash in sorted(set(names) & set(tensor_names)):
        problems.add(f"{key}.tensors.{clash}", f"{clash!r} names both a layer and a tensor")
    position = {name: index for index, name in enumerate(names)}
    uncalled = {layer.name for layer in layers if not layer.called}
    if layers and len(uncalled) == len(layers):
        problems.add(where, "every layer here has `call: false`; at least one must compute the output")
    read: set[str] = set(uncalled)  # kept without being read, by declaration
    for index, (layer, reads) in enumerate(wiring(layers)):
        if reads is None:
            continue
        if layer.inputs is None:
            read.update(reads)
            continue
        for slot, name in enumerate(layer.inputs):
            at = f"{layer.key}.inputs[{slot}]"
            read.add(name)
            if name == INPUT or name in tensor_names:
                continue
            if name in uncalled:
                problems.add(at, f"{name!r} has `call: false`: it is never called, so it has no output to read")
            elif name == layer.name:
                problems.add(at, f"{layer.name!r} cannot read its own output (that would be a cycle)")
            elif name in position and position[name] > index:
                problems.add(at, f"{name!r} is declared after {layer.name!r}; a layer reads only layers declared before it (so the graph has no cycle)")
            elif name not in position:
                known = [INPUT, *names[:index], *tensor_names]
                problems.add(at, f"no layer or tensor {name!r} here;{suggest(name, known) or ' it can read: ' + ', '.join(known)}")
    if output is not None and output != INPUT and output not in position and output not in tensor_names:
        known = [*names, *tensor_names]
        problems.add(f"{key}.output", f"no layer or tensor {output!r};{suggest(output, known) or ' it can name: ' + ', '.join(known)}")
    elif output in uncalled:
        problems.add(f"{key}.output", f"{output!r} has `call: false`: it is never called, so it has no output")
    result = output_of(layers, output)
    read.add(result)
    for layer in layers:
        if layer.name not in read:
            problems.add(layer.key, f"nothing reads the output of {layer.name!r} and it is not the output ({key}.output: {result})")
    for tensor in tensors:
        if tensor.name not in read and tensor.kind != "buffer":
            problems.add(tensor.key, f"nothing reads {tensor.name!r}: name it in some layer's `inputs` (only a buffer may be kept without being read)")
