"""The small layers: attention spelled out (SplitHeads, ScaledDotProductAttention, MergeHeads), Item
for a layer's tuple output (MultiheadAttention in a graph), non-finite constants (a -inf mask),
and the source notes' `.data` reads (Detach) and `X.sum()` (Sum, Mean).

Each is checked against plain PyTorch written here: explicit softmax attention, torch's own
nn.MultiheadAttention, and the notes' MyLinear and FixedHiddenMLP."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import runner
from runner.errors import ConfigError
from runner.prepare.plan import validate
from runner.registry.tables import layer_types


def _problems(cfg) -> dict[str, str]:
    with pytest.raises(ConfigError) as raised:
        validate(cfg)
    return {p.key: p.message for p in raised.value.problems}


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v, written out."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores + mask
    return scores.softmax(-1) @ v


# ---------------------------------------------------------------- attention in a graph

# (batch, 12) -> (batch, 3 tokens, 4) -> heads of 2 -> attention -> merged -> (batch, 12) -> head
ATTENTION = (
    "model=custom", "data=synthetic", "data.num_features=12", "data.num_outputs=4",
    "+model.layers={x: {type: Unflatten, dim: 1, unflattened_size: [3, 4]},"
    " heads: {type: SplitHeads, num_heads: 2},"
    " attend: {type: ScaledDotProductAttention, inputs: [heads, heads, heads, mask]},"
    " merged: {type: MergeHeads}, flat: {type: Flatten}, head: {type: Linear, in_features: 12, out_features: 4}}",
    "+model.tensors={mask: {shape: [3, 3], kind: buffer, persistent: false}, floor: {shape: [2], kind: buffer}}",
    # The causal mask: -inf above the diagonal, each entry by a `fill` with an index; `floor` all -inf.
    "init.rules=[{match: floor, kind: buffer, fn: constant_, val: -inf},"
    " {match: mask, kind: buffer, fn: fill, index: [0, 1], value: -inf},"
    " {match: mask, kind: buffer, fn: fill, index: [0, 2], value: -inf},"
    " {match: mask, kind: buffer, fn: fill, index: [1, 2], value: -inf}]",
)


def test_infinite_constants_fill_declared_buffers(compose):
    model = runner.build(compose(*ATTENTION))
    inf = float("inf")
    assert torch.equal(model.mask, torch.tensor([[0.0, -inf, -inf], [0.0, 0.0, -inf], [0.0, 0.0, 0.0]]))
    assert torch.equal(model.floor, torch.full((2,), -inf))


def test_infinite_masks_train_are_saved_and_load(compose, tmp_path):
    # `mask` is not saved (its rules rebuild it on load); `floor`, persistent, is saved holding -inf:
    # a buffer may hold ±inf on purpose, only a trainable tensor's Inf stops a checkpoint.
    cfg = compose(*ATTENTION, "trainer.max_steps=2", "trainer.ckpt_every=1")
    assert runner.train(cfg, tmp_path)["steps"] == 2
    loaded = runner.load(tmp_path)
    assert torch.equal(loaded.mask, torch.triu(torch.full((3, 3), float("-inf")), diagonal=1))
    assert torch.equal(loaded.floor, torch.full((2,), float("-inf")))
    from safetensors.torch import load_file

    (saved,) = (tmp_path / "checkpoints").glob("*2*/model.safetensors")
    assert torch.equal(load_file(saved)["floor"], torch.full((2,), float("-inf")))


def test_masked_attention_in_a_graph_is_softmax_attention_written_out(compose):
    model = runner.build(compose(*ATTENTION))
    x = torch.randn(5, 12)
    heads = x.reshape(5, 3, 2, 2).transpose(1, 2)  # (batch, heads, tokens, head_dim)
    causal = torch.triu(torch.full((3, 3), float("-inf")), diagonal=1)
    merged = _attention(heads, heads, heads, causal).transpose(1, 2).reshape(5, 12)
    torch.testing.assert_close(model(x), model.head(merged))


def test_attention_layers_match_plain_pytorch_causal_and_with_dropout_only_in_training():
    types = layer_types()
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, 5, 4).unbind(0)
    causal = torch.triu(torch.full((5, 5), float("-inf")), diagonal=1)
    attend = types["ScaledDotProductAttention"](is_causal=True, dropout=0.5)
    torch.testing.assert_close(attend.eval()(q, k, v), _attention(q, k, v, causal))
    attend.train()
    assert not torch.allclose(attend(q, k, v), _attention(q, k, v, causal))  # half the weights dropped
    split, merge = types["SplitHeads"](num_heads=2), types["MergeHeads"]()
    x = torch.randn(2, 5, 6)
    assert torch.equal(split(x), x.view(2, 5, 2, 3).transpose(1, 2))  # nanoGPT's view + transpose
    assert torch.equal(merge(split(x)), x)


def test_attention_arguments_and_shapes_are_config_errors_naming_the_layer(compose):
    found = _problems(compose(*ATTENTION, "model.layers.heads.num_heads=3"))
    assert "layer 'heads' (SplitHeads) failed" in found["model.layers"] and "divisible by num_heads=3" in found["model.layers"]
    found = _problems(compose(*ATTENTION, "+model.layers.attend.dropout=1.5"))
    assert "dropout must be in [0, 1], got 1.5" in found["model.layers.attend"]


# ---------------------------------------------------------------- Item: nn.MultiheadAttention in a graph

MHA = (
    "model=custom", "data=synthetic", "data.num_features=20",
    "+model.layers={x: {type: Unflatten, dim: 1, unflattened_size: [5, 4]},"
    " mha: {type: MultiheadAttention, embed_dim: 4, num_heads: 2, batch_first: true, inputs: [x, x, x]},"
    " attn_out: {type: Item, index: 0, inputs: [mha]}, flat: {type: Flatten},"
    " head: {type: Linear, in_features: 20, out_features: 4}}",
)


def test_multihead_attention_and_item_compute_what_plain_multihead_attention_does(compose):
    model = runner.build(compose(*MHA))
    plain, head = nn.MultiheadAttention(4, 2, batch_first=True), nn.Linear(20, 4)
    plain.load_state_dict(model.mha.state_dict())
    head.load_state_dict(model.head.state_dict())
    x = torch.randn(3, 20)
    tokens = x.reshape(3, 5, 4)
    expected = head(plain(tokens, tokens, tokens)[0].flatten(1))
    out = model(x)
    torch.testing.assert_close(out, expected)
    out.square().sum().backward()
    expected.square().sum().backward()
    torch.testing.assert_close(model.mha.in_proj_weight.grad, plain.in_proj_weight.grad)
    torch.testing.assert_close(model.mha.out_proj.weight.grad, plain.out_proj.weight.grad)


def test_a_graph_with_a_tuple_returning_layer_trains(compose, tmp_path):
    # Logged steps hook every layer (activation statistics): a tuple output is skipped, not a crash.
    summary = runner.train(compose(*MHA, "trainer.max_steps=2", "trainer.log_every=1"), tmp_path)
    assert summary["steps"] == 2 and math.isfinite(summary["val_loss"])


def test_a_tuple_where_a_tensor_belongs_is_a_config_error_pointing_to_item(compose):
    last = _problems(compose(*MHA[:2], "data.num_features=20",
                             "+model.layers={x: {type: Unflatten, dim: 1, unflattened_size: [5, 4]},"
                             " mha: {type: MultiheadAttention, embed_dim: 4, num_heads: 2, batch_first: true, inputs: [x, x, x]}}"))
    assert last["model.layers"].startswith("the model's output is a tuple of (2, 5, 4), (2, 5, 5), not a tensor; take one element with {type: Item, index: 0}")
    read = _problems(compose(*MHA[:-1], MHA[-1].replace(" attn_out: {type: Item, index: 0, inputs: [mha]},", "")))
    assert "layer 'flat' (Flatten) failed on inputs mha (a tuple of (2, 5, 4), (2, 5, 5))" in read["model.layers"]
    assert read["model.layers"].endswith("(a tuple: take one element with {type: Item, index: 0})")
    out_of_range = _problems(compose(*MHA[:-1], MHA[-1].replace("index: 0", "index: 2")))
    assert "layer 'attn_out' (Item) failed" in out_of_range["model.layers"] and "index 2 is out of range for a tuple of 2" in out_of_range["model.layers"]


# ---------------------------------------------------------------- non-finite constants: where they mean something


def test_infinity_only_for_constant_and_fill_and_nan_never_all_reported_at_once(compose):
    rules = [
        "{match: floor, kind: buffer, fn: constant_, val: -inf}",          # 0: a mask's -inf: fine
        "{match: mask, kind: buffer, fn: fill, index: [0, 1], value: -inf}",  # 1: fine
        "{match: head.bias, fn: constant_, val: nan}",
        "{match: head.weight, fn: fill, value: nan}",
        "{match: floor, kind: buffer, fn: add, value: -inf}",
        "{match: mask, kind: buffer, fn: scale, value: inf}",
        "{match: head.weight, fn: normal_, mean: -inf}",
        "{match: mask, kind: buffer, fn: fill, index: [0, 2], value: '-.inf'}",  # the YAML spelling, on the command line
    ]
    found = _problems(compose(*ATTENTION[:-1], f"init.rules=[{', '.join(rules)}]"))
    assert sorted(found) == [f"init.rules[{i}].{arg}" for i, arg in
                             ((2, "val"), (3, "value"), (4, "value"), (5, "value"), (6, "mean"), (7, "value"))]
    assert found["init.rules[2].val"].endswith("NaN not, got nan") and found["init.rules[3].value"].endswith("NaN not, got nan")
    assert found["init.rules[4].value"] == "expected a finite number, got -inf"
    assert found["init.rules[5].value"] == "expected a finite number, got inf"
    assert found["init.rules[6].mean"] == "expected a finite number, got -inf"
    assert "`-inf` on the command line" in found["init.rules[7].value"]


# ---------------------------------------------------------------- the notes' `.data` forward and `X.sum()`


class MyLinear(nn.Module):
    """The notes' custom module whose forward reads `.data`: its parameters get no gradient."""

    def __init__(self, in_units: int, units: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(in_units, units))
        self.bias = nn.Parameter(torch.randn(units,))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        linear = torch.matmul(X, self.weight.data) + self.bias.data
        return F.relu(linear)


def test_detach_is_the_notes_data_read_no_gradient_reaches_what_it_reads(compose):
    cfg = compose(
        "model=custom", "data=synthetic", "data.num_features=5", "data.num_outputs=3",
        "+model.tensors={weight: {shape: [5, 3]}, bias: {shape: [3]}}",
        "+model.layers={w: {type: Detach, inputs: [weight]}, b: {type: Detach, inputs: [bias]},"
        " mm: {type: MatMul, inputs: [input, w]}, linear: {type: Add, inputs: [mm, b]}, relu: {type: ReLU},"
        " fc: {type: Linear, in_features: 3, out_features: 3}, cut: {type: Detach}, head: {type: Linear, in_features: 3, out_features: 3}}",
        "init.rules=[{match: [weight, bias], fn: normal_}]",
    )
    model = runner.build(cfg)
    notes = MyLinear(5, 3)
    notes.load_state_dict({"weight": model.weight, "bias": model.bias})
    x = torch.randn(4, 5)
    hidden = notes(x)
    torch.testing.assert_close(model.relu(model.linear(x @ model.weight, model.bias)), hidden)
    expected = model.head(model.fc(hidden).detach())
    out = model(x)
    torch.testing.assert_close(out, expected)
    assert not hidden.requires_grad  # in the notes, nothing before the `.data` reads is in the autograd graph
    out.sum().backward()
    assert model.weight.grad is None and model.bias.grad is None
    assert model.fc.weight.grad is None  # the layer before the Detach
    torch.testing.assert_close(model.head.weight.grad, model.fc(hidden).detach().sum(0).expand(3, 3))


def test_sum_is_the_notes_x_sum_and_mean_reduces_the_named_dims(compose):
    types = layer_types()
    X = torch.randn(2, 3, 4)
    assert torch.equal(types["Sum"]()(X), X.sum())
    assert torch.equal(types["Sum"](dim=(0, 2), keepdim=True)(X), X.sum(dim=(0, 2), keepdim=True))
    assert torch.equal(types["Mean"](dim=-1)(X), X.mean(-1))
    # The notes' FixedHiddenMLP without its while loop: linear, relu(X @ rand_weight + 1), linear again, X.sum();
    # here per row (a regression model's (batch, 1)), whose total is the notes' X.sum().
    cfg = compose(
        "model=custom", "data=synthetic", "data.task=regression", "data.num_outputs=1",
        "+model.tensors={rand_weight: {shape: [20, 20], kind: frozen}, one: {shape: [1], kind: buffer}}",
        "+model.layers={linear: {type: Linear, in_features: 20, out_features: 20}, mm: {type: MatMul, inputs: [linear, rand_weight]},"
        " plus: {type: Add, inputs: [mm, one]}, relu: {type: ReLU}, again: {shared: linear}, total: {type: Sum, dim: 1, keepdim: true}}",
        "init.rules=[{match: rand_weight, fn: uniform_}, {match: one, kind: buffer, fn: ones_}]",
    )
    model = runner.build(cfg)
    X = torch.rand(2, 20)
    linear = model.linear
    expected = linear(F.relu(torch.mm(linear(X), model.rand_weight) + 1)).sum()
    torch.testing.assert_close(model(X).sum(), expected)
    assert model(X).shape == (2, 1)


def test_a_reduction_over_no_dims_or_a_missing_dim_is_a_config_error(compose):
    base = ("model=custom", "data=synthetic", "data.task=regression", "data.num_outputs=1")
    found = _problems(compose(*base, "+model.layers={fc: {type: Linear, in_features: 20, out_features: 3}, total: {type: Sum, dim: [], keepdim: true}}"))
    assert "dim: [] names no dim" in found["model.layers.total"]
    found = _problems(compose(*base, "+model.layers={fc: {type: Linear, in_features: 20, out_features: 3}, total: {type: Mean, dim: 2, keepdim: true}}"))
    assert "layer 'total' (Mean) failed" in found["model.layers"]
