"""Model spec -> a picture of its wiring: a Mermaid flowchart and a markdown page around it.

Pure: reads the spec only (no module is built), so it draws what the config declares. Each layer
is a node, each value it reads an edge (numbered when it reads more than one), declared tensors
are cylinders, containers are subgraphs with their own input node (a Residual ends in a `+` node
with the skip edge), ties are dotted edges between the layers (or tensors) that own the tied
tensors. `python -m runner.inspect` prints the page; every run directory keeps it as model.md.
"""

from __future__ import annotations

import re
from typing import Any

from runner.spec.types import INPUT, LayerSpec, ModelSpec, TensorSpec, TieSpec, output_of, wiring

MODEL_INPUT, MODEL_OUTPUT = "model_input", "model_output"
# (in, out) argument pairs drawn as `in→out`; the other arguments follow as k=v while the label stays short.
_PAIRS = (("in_features", "out_features"), ("in_channels", "out_channels"), ("num_embeddings", "embedding_dim"))
_MAX_ARGS_TEXT = 30
_ESCAPES = {"#": "#35;", '"': "#quot;", "<": "#lt;", ">": "#gt;"}


def mermaid(model: ModelSpec) -> str:
    """Returns a Mermaid `flowchart TD` of the model: input, layers, tensors, containers, ties, output."""
    return "\n".join(_Diagram(model).lines)


def model_markdown(model: ModelSpec) -> str:
    """Returns a markdown page: the model's name, its Mermaid diagram, and the same wiring as text tables."""
    lines = [f"# Model: {model.name}", "", "```mermaid", mermaid(model), "```", "",
             "| layer | type | reads |", "|---|---|---|"]
    lines += [f"| {path} | {kind} | {reads} |" for path, kind, reads in _layer_rows(model.layers, "")]
    tensors = [*_tensor_rows(model.tensors, ""), *_nested_tensor_rows(model.layers, "")]
    if tensors:
        lines += ["", "| tensor | shape | kind |", "|---|---|---|", *tensors]
    if model.ties:
        lines += ["", "Ties (one stored tensor, several names):", ""]
        lines += [f"- {tie.target} = {tie.source}{_transposed(tie)}" for tie in model.ties]
    output = output_of(model.layers, model.output) if model.layers else "-"
    lines += ["", f"Output: {output}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the flowchart


class _Diagram:
    """Walks the spec once, writing Mermaid lines; `nodes` maps each layer's and tensor's dotted path to its id."""

    def __init__(self, model: ModelSpec):
        self.lines = ["flowchart TD", f'    {MODEL_INPUT}(["{INPUT}"])']
        self.nodes: dict[str, str] = {}
        self.taken: set[str] = set()
        self.edge_lines: list[str] = []  # written after every node: an edge inside a subgraph block would pull its nodes in
        self.shared: list[tuple[str, str]] = []  # (shared path, id of the node that reuses it)
        result = self.container(model.layers, model.tensors, model.output, "", MODEL_INPUT, "    ")
        self.lines.append(f'    {MODEL_OUTPUT}(["output"])')
        self.edge(result, MODEL_OUTPUT)
        for path, node in self.shared:
            if (original := self.owner(path)) is not None:
                self.edge(original, node, "shared", dotted=True)
        for tie in model.ties:
            source, target = self.owner(tie.source), self.owner(tie.target)
            if source is not None and target is not None:
                self.edge(source, target, f"tied{_transpose_mark(tie)}", dotted=True)
        self.lines += self.edge_lines

    def container(self, layers: tuple[LayerSpec, ...], tensors: tuple[TensorSpec, ...], output: str | None,
                  prefix: str, input_id: str, indent: str) -> str:
        """Draws one container's tensors and layers; returns the id of the node holding its output."""
        values = {INPUT: input_id}
        for tensor in tensors:
            values[tensor.name] = self.node(prefix + tensor.name, "[(", _tensor_label(tensor), ")]", indent)
        for layer, reads in wiring(layers):
            sources = [values[name] for name in reads or () if name in values]  # the spec's checks name any other
            node = self.layer(layer, prefix + layer.name, sources, indent)
            if reads is not None:  # a layer with call: false is drawn, unconnected, and has no value
                values[layer.name] = node
        result = output_of(layers, output)
        return values.get(result, input_id)

    def layer(self, layer: LayerSpec, path: str, sources: list[str], indent: str) -> str:
        if not layer.children:
            label = f"{layer.name} = {layer.shared} (shared)" if layer.shared is not None else _layer_label(layer)
            node = self.node(path, "[", label, "]", indent)
            if layer.shared is not None:
                self.shared.append((layer.shared, node))
            self.edges(sources, node)
            return node
        group = self.unique("g_" + _safe(path))
        self.lines.append(f'{indent}subgraph {group} ["{_escape(_layer_label(layer))}"]')
        inner = indent + "    "
        entry = self.nodes[path] = self.unique("in_" + _safe(path))  # a tie or `shared` naming the container points here
        self.lines.append(f'{inner}{entry}(["{INPUT}"])')
        self.edges(sources, entry)
        result = self.container(layer.children, layer.tensors, layer.output, path + ".", entry, inner)
        if layer.type == "Residual":  # x + f(x): the block's output plus its input
            add = self.unique("add_" + _safe(path))
            self.lines.append(f'{inner}{add}(("+"))')
            self.edge(result, add)
            self.edge(entry, add, "skip")
            result = add
        self.lines.append(f"{indent}end")
        return result

    def node(self, path: str, opening: str, label: str, closing: str, indent: str) -> str:
        node = self.nodes[path] = self.unique("n_" + _safe(path))
        self.lines.append(f'{indent}{node}{opening}"{_escape(label)}"{closing}')
        return node

    def unique(self, node: str) -> str:
        """Returns `node`, or it with a counter when another path already sanitized to the same id."""
        candidate, count = node, 1
        while candidate in self.taken:
            count += 1
            candidate = f"{node}_{count}"
        self.taken.add(candidate)
        return candidate

    def edges(self, sources: list[str], target: str) -> None:
        for position, source in enumerate(sources, start=1):
            self.edge(source, target, str(position) if len(sources) > 1 else None)

    def edge(self, source: str, target: str, label: str | None = None, dotted: bool = False) -> None:
        arrow = "-.->" if dotted else "-->"
        self.edge_lines.append(f'    {source} {arrow}|"{_escape(label)}"| {target}' if label else f"    {source} {arrow} {target}")

    def owner(self, name: str) -> str | None:
        """Returns the id of the node owning a tensor or module path (`blocks.0.fc1.weight` -> blocks.fc1),
        the copy index of a repeated layer left out: the diagram draws one copy."""
        parts = [part for part in name.split(".") if not part.isdigit()]
        for end in range(len(parts), 0, -1):
            if (node := self.nodes.get(".".join(parts[:end]))) is not None:
                return node
        return None


def _layer_label(layer: LayerSpec) -> str:
    return f"{layer.name}: {_describe(layer)}" + ("" if layer.called else " (never called)")


def _describe(layer: LayerSpec) -> str:
    """Returns the layer's type with its key arguments in short form: `Linear 64→128`, `Conv2d 1→16 kernel_size=3`."""
    if layer.shared is not None:
        return f"same module as {layer.shared}"
    args = dict(layer.args)
    parts = [f"{args.pop(a)}→{args.pop(b)}" for a, b in _PAIRS if a in args and b in args]
    for key, value in args.items():
        part = f"{key}={_short(value)}"
        if len(" ".join([*parts, part])) > _MAX_ARGS_TEXT:
            parts.append("…")
            break
        parts.append(part)
    text = " ".join([str(layer.type), *parts]) + (f" x{layer.repeat}" if layer.repeat > 1 else "")
    if layer.variants:
        text += f" (copy {', '.join(str(i) for i, _ in layer.variants)} overridden)"
    return text + (" (+ input)" if layer.type == "Residual" else "")


def _short(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(map(_short, value)) + "]"
    return str(value)


def _tensor_label(tensor: TensorSpec) -> str:
    return f"{tensor.name} {_short(tensor.shape)} {_kind(tensor)}"


def _kind(tensor: TensorSpec) -> str:
    return "non-persistent buffer" if tensor.kind == "buffer" and not tensor.persistent else tensor.kind


def _transpose_mark(tie: TieSpec) -> str:
    """Returns ` ^T` for a 2-D transposed tie, ` ^T[2,3]` for one on named dims, else nothing."""
    if tie.dims is None:
        return ""
    return " ^T" if tie.transpose is True else " ^T[{},{}]".format(*tie.dims)


def _transposed(tie: TieSpec) -> str:
    if tie.dims is None:
        return ""
    return ", transposed" if tie.transpose is True else f", transposed on dims {list(tie.dims)}"


def _escape(text: str) -> str:
    """Returns text safe inside a quoted Mermaid label: quotes, angle brackets and # as entity codes."""
    return re.sub(r'[#"<>]', lambda match: _ESCAPES[match.group()], text)


def _safe(path: str) -> str:
    """Returns a dotted path as Mermaid id characters: letters, digits, underscores."""
    return re.sub(r"[^A-Za-z0-9_]", "_", path.replace(".", "__"))


# ---------------------------------------------------------------- the text tables


def _layer_rows(layers: tuple[LayerSpec, ...], prefix: str) -> list[tuple[str, str, str]]:
    """Returns (dotted path, type, what it reads) for each layer, containers' children after their container."""
    rows = []
    for layer, reads in wiring(layers):
        read = ", ".join(reads) if reads is not None else "(call: false: never called)"
        rows.append((prefix + layer.name, _describe(layer).replace("|", "\\|"), read))  # a `|` would end the cell
        rows += _layer_rows(layer.children, f"{prefix}{layer.name}.")
    return rows


def _tensor_rows(tensors: tuple[TensorSpec, ...], prefix: str) -> list[str]:
    return [f"| {prefix}{t.name} | {'x'.join(map(str, t.shape))} | {_kind(t)} |" for t in tensors]


def _nested_tensor_rows(layers: tuple[LayerSpec, ...], prefix: str) -> list[str]:
    rows = []
    for layer in layers:
        rows += _tensor_rows(layer.tensors, f"{prefix}{layer.name}.")
        rows += _nested_tensor_rows(layer.children, f"{prefix}{layer.name}.")
    return rows
