"""model.md: the Mermaid picture of a model's wiring, checked edge by edge against wiring written
out here by hand, and line by line against the only Mermaid forms the diagram may use."""

from __future__ import annotations

import re

import pytest

import runner
from conftest import config_names
from runner.errors import Problems
from runner.inspect import main as inspect_main
from runner.model.diagram import mermaid, model_markdown
from runner.prepare.plan import validate
from runner.spec import parse
from runner.spec.types import LayerSpec, ModelSpec, TensorSpec

# The strict grammar of what the diagram writes: a header, nodes in four shapes, edges, subgraph blocks.
HEADER = "flowchart TD"
ID = r"[A-Za-z_][A-Za-z0-9_]*"
LABEL = r'"[^"<>]*"'  # quotes and angle brackets only as entity codes
NODE = re.compile(rf"^\s+({ID})(\[{LABEL}\]|\[\({LABEL}\)\]|\(\[{LABEL}\]\)|\(\({LABEL}\)\))$")
EDGE = re.compile(rf'^\s+({ID}) (-->|-\.->)(?:\|"([^"<>|]*)"\|)? ({ID})$')
SUBGRAPH = re.compile(rf"^\s+subgraph ({ID}) \[{LABEL}\]$")
END = re.compile(r"^\s+end$")
KEYWORDS = {"end", "subgraph", "graph", "flowchart", "style", "class", "classDef", "click", "linkStyle", "direction", "default"}

# A graph with every feature: a model tensor read by a Mul, an Add reading [input, gated], a repeated
# Residual container owning a tensor, a shared layer, a buffer nothing reads, a tie on named dims.
GRAPH = (
    "model=custom",
    "+model.layers={f: {type: Linear, in_features: 64, out_features: 64}, gated: {type: Mul, inputs: [f, alpha]},"
    " out: {type: Add, inputs: [input, gated]},"
    " block: {type: Residual, repeat: 2, tensors: {scale: {shape: [1]}},"
    " layers: {g: {type: Linear, in_features: 64, out_features: 64}, scaled: {type: Mul, inputs: [g, scale]}}},"
    " again: {shared: f}, head: {type: Linear, in_features: 64, out_features: 10}}",
    "+model.tensors={alpha: {shape: [1]}, pe: {shape: [3, 4], kind: buffer, persistent: false}}",
    "model.ties=[{target: block.1.g.weight, source: f.weight, transpose: [0, 1]}]",
)

GRAPH_EDGES = {  # (from, to, label, dotted), written from the config above
    ("model_input", "n_f", None, False),
    ("n_f", "n_gated", "1", False), ("n_alpha", "n_gated", "2", False),
    ("model_input", "n_out", "1", False), ("n_gated", "n_out", "2", False),
    ("n_out", "in_block", None, False),
    ("in_block", "n_block__g", None, False),
    ("n_block__g", "n_block__scaled", "1", False), ("n_block__scale", "n_block__scaled", "2", False),
    ("n_block__scaled", "add_block", None, False), ("in_block", "add_block", "skip", False),
    ("add_block", "n_again", None, False),
    ("n_again", "n_head", None, False),
    ("n_head", "model_output", None, False),
    ("n_f", "n_again", "shared", True),
    ("n_f", "n_block__g", "tied ^T[0,1]", True),
}


def _model(cfg) -> ModelSpec:
    problems = Problems()
    spec = parse(cfg, problems)
    assert not problems.items
    return spec.model


def _check_syntax(text: str) -> tuple[dict[str, str], list[tuple[str, str, str | None, bool]]]:
    """Checks every line against the forms the diagram may write; returns its nodes (id -> line) and edges."""
    lines = text.splitlines()
    assert lines[0] == HEADER
    nodes: dict[str, str] = {}
    edges = []
    groups: list[str] = []
    depth = 0
    for line in lines[1:]:
        if node := NODE.match(line):
            assert node.group(1) not in nodes, f"node {node.group(1)} declared twice"
            nodes[node.group(1)] = line
        elif edge := EDGE.match(line):
            assert depth == 0, f"an edge inside a subgraph block pulls its nodes in: {line!r}"
            edges.append((edge.group(1), edge.group(4), edge.group(3), edge.group(2) == "-.->"))
        elif group := SUBGRAPH.match(line):
            groups.append(group.group(1))
            depth += 1
        elif END.match(line):
            depth -= 1
            assert depth >= 0, "`end` without its subgraph"
        else:
            pytest.fail(f"not a form the diagram writes: {line!r}")
    assert depth == 0, "a subgraph is not closed"
    ids = [*nodes, *groups]
    assert len(set(ids)) == len(ids) and not set(ids) & KEYWORDS
    for source, target, _, _ in edges:
        assert source in nodes and target in nodes, f"edge {source} -> {target} names an undeclared node"
    return nodes, edges


def test_a_chain_is_a_straight_line_from_input_to_output(compose):
    model = _model(compose("model=mlp"))
    nodes, edges = _check_syntax(mermaid(model))
    path = ["model_input", "n_fc1", "n_act1", "n_fc2", "n_act2", "n_head", "model_output"]
    assert edges == [(a, b, None, False) for a, b in zip(path, path[1:])]
    assert set(nodes) == set(path)
    assert nodes["n_fc1"].strip() == 'n_fc1["fc1: Linear 64→128"]'
    assert nodes["model_input"].strip() == 'model_input(["input"])'


def test_a_graph_draws_every_edge_it_reads_and_nothing_else(compose):
    cfg = compose(*GRAPH)
    validate(cfg)  # the config is a model the runner builds
    text = mermaid(_model(cfg))
    nodes, edges = _check_syntax(text)
    assert set(edges) == GRAPH_EDGES and len(edges) == len(GRAPH_EDGES)
    assert nodes["n_alpha"].strip() == 'n_alpha[("alpha [1] parameter")]'
    assert nodes["n_pe"].strip() == 'n_pe[("pe [3,4] non-persistent buffer")]'  # drawn, read by nothing
    assert nodes["n_again"].strip() == 'n_again["again = f (shared)"]'
    assert nodes["add_block"].strip() == 'add_block(("+"))'
    assert 'subgraph g_block ["block: Residual x2 (+ input)"]' in text
    inside = text.split("subgraph g_block")[1].split("\n    end")[0]
    assert {"in_block", "n_block__g", "n_block__scale", "n_block__scaled", "add_block"} == set(re.findall(r"^\s+(\w+)[\[(]", inside, re.M))


def test_a_transposed_2d_tie_and_a_shared_layer_in_the_shipped_models(compose):
    _, edges = _check_syntax(mermaid(_model(compose("model=autoencoder"))))
    assert ("n_enc", "n_dec", "tied ^T", True) in edges
    _, edges = _check_syntax(mermaid(_model(compose("model=tied_mlp"))))
    assert ("n_shared", "n_shared_again", "shared", True) in edges
    nodes, edges = _check_syntax(mermaid(_model(compose("model=nested"))))
    assert ("n_stem", "in_blocks", None, False) in edges and ("n_blocks__act2", "n_head", None, False) in edges


@pytest.mark.parametrize("name", [name for name in config_names("model") if name != "custom"])
def test_every_shipped_model_draws_in_the_strict_forms(compose, name):
    _check_syntax(mermaid(_model(compose(f"model={name}"))))


def test_labels_are_escaped_and_ids_sanitized():
    # Built by hand (no config checks): an argument with quotes, brackets and `#`, a name that sanitizes like another.
    model = ModelSpec("odd", (
        LayerSpec("a_b", "k", "Dropout", (("p", 'say "hi" <b> #1'),)),
        LayerSpec("a", "k", "Sequential", children=(LayerSpec("b", "k", "ReLU"),)),
    ), tensors=(TensorSpec("end", "k", (1,)),), output="a")
    nodes, _ = _check_syntax(mermaid(model))
    assert 'p=say #quot;hi#quot; #lt;b#gt; #35;1' in nodes["n_a_b"]
    assert "n_a__b" in nodes and "n_end" in nodes  # `a.b` vs `a_b`; `end` only inside an id


def test_model_markdown_has_the_diagram_and_a_text_table(compose):
    page = model_markdown(_model(compose(*GRAPH)))
    assert page.startswith("# Model: custom\n\n```mermaid\nflowchart TD\n")
    block = page.split("```mermaid\n")[1].split("```")[0]
    _check_syntax(block)
    for row in ("| f | Linear 64→64 | input |", "| gated | Mul | f, alpha |", "| out | Add | input, gated |",
                "| block | Residual x2 (+ input) | out |", "| block.g | Linear 64→64 | input |",
                "| block.scaled | Mul | g, scale |", "| again | same module as f | block |", "| head | Linear 64→10 | again |",
                "| alpha | 1 | parameter |", "| pe | 3x4 | non-persistent buffer |", "| block.scale | 1 | parameter |",
                "- block.1.g.weight = f.weight, transposed on dims [0, 1]", "Output: head"):
        assert row in page, row


def test_every_run_directory_has_model_md(compose, tmp_path):
    runner.train(compose("trainer.max_steps=2"), tmp_path)
    page = (tmp_path / "model.md").read_text(encoding="utf-8")
    assert page.startswith("# Model: mlp\n") and "```mermaid\nflowchart TD\n" in page
    assert "    n_act2 --> n_head\n" in page


def test_inspect_prints_the_page_after_the_tensor_table(capsys):
    inspect_main(["model=tied_mlp"])
    out = capsys.readouterr().out
    assert out.index("| name | aliases |") < out.index("# Model: tied_mlp") < out.index("```mermaid")
    assert "n_shared -.->|\"shared\"| n_shared_again" in out
