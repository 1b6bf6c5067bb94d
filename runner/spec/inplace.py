"""The in-place check: a layer that overwrites its input (`inplace: true`) must be that value's only reader."""

from __future__ import annotations

from runner.errors import Problems
from runner.spec.types import INPUT, LayerSpec, TensorSpec, output_of, wiring

# Layers whose output may be their input itself or a view of it (Dropout is the identity in eval
# mode): an in-place layer after one of them overwrites the value it was given.
_VIEWS = frozenset({"Identity", "Flatten", "Unflatten", "Reshape", "Permute", "Select", "Slice", "TokensToRows", "Dropout", "Dropout1d",
                    "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout", "Detach", "Item", "SplitHeads", "MergeHeads"})
_MERGES = frozenset({"Add", "Mul"})  # with one input, the input itself
# Layers whose backward reads their own output: overwriting it stops the first backward.
_SAVES_OUTPUT = frozenset({"ReLU", "Sigmoid", "Tanh", "Softmax", "LogSoftmax"})


class InPlace:
    """Which values a model's layers overwrite in place, and who else reads them.

    An in-place layer (`inplace: true`, also inside a container, a copy or a `shared` reuse) must be
    the only reader of the value it overwrites and of every view of it: another reader, the
    container's output, a residual sum or, at the top, the batch (a slice of the dataset) would
    silently see the overwritten values.
    """

    def __init__(self, layers: tuple[LayerSpec, ...], problems: Problems):
        self.problems = problems
        self.by_path: dict[str, LayerSpec] = {}
        self._index(layers, "")

    def _index(self, layers: tuple[LayerSpec, ...], prefix: str) -> None:
        for layer in layers:
            path = prefix + layer.name
            self.by_path[path] = layer
            if layer.numbered:
                for index in range(layer.repeat):
                    copy = layer.copy(index)
                    self.by_path[f"{path}.{index}"] = copy
                    self._index(copy.children, f"{path}.{index}.")
            else:
                self._index(layer.children, f"{path}.")

    def _module(self, layer: LayerSpec) -> LayerSpec | None:
        """The layer a `shared` reuse calls (None when its path names nothing: the build reports that)."""
        seen = set()
        while layer.shared is not None and layer.shared not in seen:
            seen.add(layer.shared)
            target = self.by_path.get(layer.shared)
            if target is None:
                return None
            layer = target
        return layer

    def overwrites(self, layer: LayerSpec) -> bool:
        """True when calling the layer overwrites the one value it reads."""
        module = self._module(layer)
        if module is None or not layer.called:
            return False
        if module.numbered:  # copy i overwrites the input when every copy before it passed the input on
            for index in range(module.repeat):
                copy = module.copy(index)
                if self.overwrites(copy):
                    return True
                if not self.passes_on(copy, (INPUT,)):
                    return False
            return False
        if module.children:
            roots = self._roots(module.children)
            return any(len(reads) == 1 and roots.get(reads[0]) == INPUT and self.overwrites(child)
                       for child, reads in wiring(module.children) if reads is not None)
        return dict(module.args).get("inplace") is True

    def passes_on(self, layer: LayerSpec, reads: tuple[str, ...]) -> bool:
        """True when the layer's output may be the value it read itself, or a view of it."""
        module = self._module(layer)
        if module is None or len(reads) != 1 or self.overwrites(layer):  # what it returns is new values, meant for its readers
            return False
        if module.numbered:
            return all(self.passes_on(module.copy(i), reads) for i in range(module.repeat))
        if module.children:
            return module.type != "Residual" and self._roots(module.children).get(output_of(module.children, module.output)) == INPUT
        return module.type in _VIEWS or module.type in _MERGES

    def _roots(self, layers: tuple[LayerSpec, ...]) -> dict[str, str]:
        """Returns value name -> the value whose storage it shares (itself unless passed on; one element
        of a tuple, `Item`, is a storage of its own)."""
        roots = {INPUT: INPUT}
        for layer, reads in wiring(layers):
            if reads is None:
                continue
            source = roots.get(reads[0], reads[0])
            if self.passes_on(layer, reads):
                module = self._module(layer)
                roots[layer.name] = f"{source}[{dict(module.args).get('index')}]" if module is not None and module.type == "Item" else source
            else:
                roots[layer.name] = layer.name
        return roots

    def check(self, layers: tuple[LayerSpec, ...], tensors: tuple[TensorSpec, ...], output: str | None, residual: bool, top: bool) -> None:
        """Checks one container (or the model), then every container inside it."""
        roots = {**self._roots(layers), **{t.name: t.name for t in tensors}}
        readers: dict[str, list[str]] = {}  # storage -> who reads it (what passes a value on copies nothing)
        overwriting: list[tuple[LayerSpec, str]] = []
        for layer, reads in wiring(layers):
            if reads is None:
                continue
            if not self.passes_on(layer, reads):
                for name in reads:
                    readers.setdefault(roots.get(name, name), []).append(f"layer {layer.name!r}")
            if len(reads) == 1 and self.overwrites(layer):
                overwriting.append((layer, reads[0]))
        result = output_of(layers, output)
        readers.setdefault(roots.get(result, result), []).append(f"the output ({result!r})")
        if residual:
            readers.setdefault(INPUT, []).append("the residual sum (input + output)")
        if top:
            readers.setdefault(INPUT, []).append("the training loop (the batch is a slice of the dataset, which would change)")
        producers = {other.name: self._module(other) for other in layers}
        for layer, value in overwriting:
            storage = roots.get(value, value)
            producer = producers.get(storage)
            if producer is not None and not producer.numbered and producer.type in _SAVES_OUTPUT:
                self.problems.add(f"{layer.key}.inplace" if dict(layer.args).get("inplace") is True else layer.key,
                                  f"{layer.name!r} overwrites the output of {storage!r} ({producer.type}) in place, but {producer.type}'s "
                                  f"backward reads its own output: the first backward would stop; set inplace: false")
                continue
            others = [r for r in readers.get(storage, []) if r != f"layer {layer.name!r}"]
            if storage in {t.name for t in tensors}:
                others.insert(0, f"the tensor {storage!r} itself")
            if others:
                what = repr(value) if storage == value else f"{value!r} (a view of {storage!r})"
                how = ("" if dict(layer.args).get("inplace") is True and not layer.variants
                       else f" (it reuses {layer.shared!r})" if layer.shared is not None
                       else " (a layer inside it does)" if layer.children else " (one of its copies does)")
                self.problems.add(f"{layer.key}.inplace" if dict(layer.args).get("inplace") is True else layer.key,
                                  f"{layer.name!r} overwrites {what} in place{how}, but {others[0]} also reads it and would see "
                                  f"the overwritten values; set inplace: false (or give {layer.name!r} a value no one else reads)")
        for layer in layers:
            for copy in ([layer, *(v for _, v in layer.variants)] if layer.children else []):
                self.check(copy.children, copy.tensors, copy.output, copy.type == "Residual", top=False)
