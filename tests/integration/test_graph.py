"""The model language beyond chains: graphs wired by name, tensors the model owns, merge layers,
N-D transposed ties, exact-type and modifier init rules, eval_modules. Each checked against plain
PyTorch written here, independently of the builder."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import runner
from runner.errors import ConfigError
from runner.prepare.plan import validate
from runner.run import checkpoint
from runner.run.directory import weights_sha256

GATED = (
    "model=custom",
    "+model.layers={f: {type: Linear, in_features: 64, out_features: 64}, gated: {type: Mul, inputs: [f, alpha]},"
    " out: {type: Add, inputs: [input, gated]}, head: {type: Linear, in_features: 64, out_features: 10}}",
    "+model.tensors={alpha: {shape: [1], kind: parameter}, pe: {shape: [3, 4], kind: buffer, persistent: true},"
    " scratch: {shape: [2], kind: buffer, persistent: false}, fixed: {shape: [64], kind: frozen}}",
    "+model.layers.shift={type: Add, inputs: [head, bias10]}",
)


def _gated(compose, *extra):
    return compose(
        "model=custom",
        "+model.layers={f: {type: Linear, in_features: 64, out_features: 64}, gated: {type: Mul, inputs: [f, alpha]},"
        " out: {type: Add, inputs: [input, gated, fixed]}, head: {type: Linear, in_features: 64, out_features: 10}}",
        "+model.tensors={alpha: {shape: [1]}, fixed: {shape: [64], kind: frozen},"
        " pe: {shape: [3, 4], kind: buffer}, scratch: {shape: [2], kind: buffer, persistent: false}}",
        "init.rules=[{match: alpha, fn: constant_, val: 0.5}, {match: fixed, fn: uniform_},"
        " {match: pe, kind: buffer, fn: normal_}, {match: scratch, kind: buffer, fn: ones_}]",
        *extra,
    )


def test_a_graph_computes_what_plain_pytorch_computes_outputs_and_gradients(compose):
    model = runner.build(_gated(compose))
    f, head = nn.Linear(64, 64), nn.Linear(64, 10)
    f.load_state_dict(model.f.state_dict())
    head.load_state_dict(model.head.state_dict())
    alpha = model.alpha.detach().clone().requires_grad_()
    fixed = model.fixed.detach().clone()
    x = torch.randn(5, 64)
    expected = head(x + f(x) * alpha + fixed)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    expected.square().sum().backward()
    model(x).square().sum().backward()
    torch.testing.assert_close(model.alpha.grad, alpha.grad)
    torch.testing.assert_close(model.f.weight.grad, f.weight.grad)
    assert model.fixed.grad is None


def test_declared_tensors_have_their_kinds_names_and_init(compose):
    model = runner.build(_gated(compose))
    params = dict(model.named_parameters())
    assert set(params) == {"alpha", "fixed", "f.weight", "f.bias", "head.weight", "head.bias"}
    assert params["alpha"].requires_grad and not params["fixed"].requires_grad
    assert torch.equal(model.alpha, torch.full((1,), 0.5))
    assert model.fixed.min() >= 0 and model.fixed.max() < 1 and model.fixed.std() > 0.1  # U(0, 1)
    buffers = dict(model.named_buffers())
    assert set(buffers) == {"pe", "scratch"} and torch.equal(model.scratch, torch.ones(2))
    state = model.state_dict()
    assert "pe" in state and "scratch" not in state and "fixed" in state and "alpha" in state


def test_declared_tensors_survive_checkpoint_resume_and_load_bit_exactly(compose, tmp_path):
    cfg = _gated(compose, "trainer.epochs=2", "trainer.ckpt_every=10", "trainer.keep_last=10")
    full = runner.train(cfg, tmp_path / "full")
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    for late in sorted((tmp_path / "cut" / "checkpoints").iterdir())[2:]:
        shutil.rmtree(late)
    (tmp_path / "cut" / "summary.json").unlink()
    resumed = runner.resume(tmp_path / "cut")
    assert resumed["weights_sha256"] == full["weights_sha256"]
    loaded = runner.load(tmp_path / "full")
    assert weights_sha256(loaded) == full["weights_sha256"]
    from safetensors.torch import load_file  # the library's own reader

    saved = load_file(checkpoint.latest_checkpoint(tmp_path / "full") / "model.safetensors")
    assert torch.equal(saved["alpha"], loaded.alpha) and torch.equal(saved["pe"], loaded.pe)
    assert "scratch" not in saved and torch.equal(loaded.scratch, torch.ones(2))  # replayed by its rule
    assert not torch.equal(saved["alpha"], torch.full((1,), 0.5))  # trained
    assert torch.equal(saved["fixed"], runner.build(cfg).fixed)  # frozen: unchanged by training


def test_tensors_table_lists_declared_tensors(compose, tmp_path):
    runner.train(_gated(compose, "trainer.max_steps=2"), tmp_path)
    table = (tmp_path / "tensors.md").read_text()
    assert "| alpha |  | 1 | 1 | parameter | rule[0] constant_(val=0.5) |" in table
    assert "| fixed |  | 64 | 64 | frozen |" in table
    assert "| scratch |  | 3x4 |" not in table and "| scratch |  | 2 | 2 | non-persistent buffer |" in table


def test_concat_skip_and_a_token_broadcast_along_the_batch(compose):
    # A ViT-style class token (1, 1, 4) joined in front of (batch, 3, 4) tokens, then a skip by concatenation.
    cfg = compose(
        "model=custom",
        "+model.layers={rows: {type: Unflatten, dim: 1, unflattened_size: [16, 4]},"
        " tokens: {type: Linear, in_features: 4, out_features: 4},"
        " joined: {type: Concat, dim: 1, inputs: [cls, tokens]},"
        " first: {type: Select, dim: 1, index: 0},"
        " skip: {type: Concat, dim: 1, inputs: [first, input]},"
        " head: {type: Linear, in_features: 68, out_features: 10}}",
        "+model.tensors={cls: {shape: [1, 1, 4]}}",
        "init.rules=[{match: cls, fn: normal_}]",
    )
    model = runner.build(cfg)
    x = torch.randn(3, 64)
    tokens = model.tokens(x.reshape(3, 16, 4))
    joined = torch.cat([model.cls.expand(3, 1, 4), tokens], dim=1)
    expected = model.head(torch.cat([joined[:, 0], x], dim=1))
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_matmul_and_permute(compose):
    cfg = compose(
        "model=custom",
        "+model.layers={grid: {type: Unflatten, dim: 1, unflattened_size: [8, 8]},"
        " turned: {type: Permute, dims: [0, 2, 1]}, prod: {type: MatMul, inputs: [grid, turned]},"
        " flat: {type: Flatten}, head: {type: Linear, in_features: 64, out_features: 10}}",
    )
    model = runner.build(cfg)
    x = torch.randn(2, 64)
    g = x.reshape(2, 8, 8)
    torch.testing.assert_close(model(x), model.head((g @ g.transpose(1, 2)).reshape(2, 64)), rtol=0, atol=0)


def test_a_container_graph_with_its_own_tensor_repeated(compose):
    # A residual block with a learnable scalar on its branch, repeated: x + s * f(x), twice, independent copies.
    cfg = compose(
        "model=custom",
        "+model.layers={blocks: {type: Residual, repeat: 2, tensors: {scale: {shape: [1]}},"
        " layers: {f: {type: Linear, in_features: 64, out_features: 64}, scaled: {type: Mul, inputs: [f, scale]}}},"
        " head: {type: Linear, in_features: 64, out_features: 10}}",
        "init.rules=[{match: 'blocks.*.scale', fn: constant_, val: 0.25}]",
    )
    model = runner.build(cfg)
    assert [n for n, _ in model.named_parameters() if n.endswith("scale")] == ["blocks.0.scale", "blocks.1.scale"]
    x = torch.randn(4, 64)
    h = x
    for block in model.blocks:
        h = h + 0.25 * block.f(h)
    torch.testing.assert_close(model(x), model.head(h), rtol=0, atol=0)


CONVNET = (
    "model=custom",
    "data.name=synthetic", "data.task=regression", "data.num_features=48", "data.num_outputs=48",
    "+model.layers={image: {type: Unflatten, dim: 1, unflattened_size: [3, 4, 4]},"
    " conv1: {type: Conv2d, in_channels: 3, out_channels: 3, kernel_size: [5, 3], padding: [2, 1], bias: false},"
    " conv2: {type: Conv2d, in_channels: 3, out_channels: 3, kernel_size: [3, 5], padding: [1, 2], bias: false},"
    " flat: {type: Flatten}}",
)


def test_a_tie_transposed_on_dims_2_and_3_is_one_tensor_whose_gradients_add_up(compose):
    # The notes' ConvNet: one (3, 3, k1, k2) weight used twice, the second time transposed on dims 2 and 3.
    model = runner.build(compose(*CONVNET, "model.ties=[{target: conv2.weight, source: conv1.weight, transpose: [2, 3]}]"))
    assert [n for n, _ in model.named_parameters()] == ["conv1.weight"]
    state = model.state_dict()  # both names, one storage (the checkpoint stores it once, with the tie map)
    assert state["conv2.parametrizations.weight.original"].data_ptr() == state["conv1.weight"].data_ptr()
    w = model.conv1.weight.detach().clone().requires_grad_()
    x = torch.randn(2, 48)
    image = x.reshape(2, 3, 4, 4)
    expected = F.conv2d(F.conv2d(image, w, padding=(2, 1)), w.transpose(2, 3).contiguous(), padding=(1, 2)).reshape(2, 48)
    out = model(x)
    torch.testing.assert_close(out, expected)
    expected.sum().backward()
    out.sum().backward()
    torch.testing.assert_close(model.conv1.weight.grad, w.grad)


@pytest.mark.parametrize("transpose, text", [
    ("[2, 5]", "dims [2, 5] are out of range for source 'conv1.weight' of shape (3, 3, 5, 3)"),
    ("[0, 1]", "shape mismatch: target 'conv2.weight' is (3, 3, 3, 5) but source 'conv1.weight' transposed on dims [0, 1] gives (3, 3, 5, 3)"),
    ("true", "`true` transposes a 2-D tensor; source 'conv1.weight' has shape (3, 3, 5, 3): name the two dims to swap, e.g. transpose: [2, 3]"),
    ("[1, 1]", "expected true (a 2-D transpose), false, or two different dims"),
])
def test_bad_nd_transposes_are_named(compose, transpose, text):
    with pytest.raises(ConfigError) as error:
        validate(compose(*CONVNET, f"model.ties=[{{target: conv2.weight, source: conv1.weight, transpose: {transpose}}}]"))
    assert "model.ties[0]" in str(error.value) and text in str(error.value)


ENCODER = (
    "model=custom",
    "+model.layers={rows: {type: Unflatten, dim: 1, unflattened_size: [8, 8]},"
    " enc: {type: TransformerEncoderLayer, d_model: 8, nhead: 2, dim_feedforward: 16, batch_first: true},"
    " flat: {type: Flatten}, head: {type: Linear, in_features: 64, out_features: 10}}",
)


def test_exact_type_selector_leaves_subclasses_out(compose):
    # The notes' `type(m) == nn.Linear`: MultiheadAttention's out_proj is a Linear subclass, so it is left out.
    exact = runner.build(compose(*ENCODER, "init.rules=[{match: '*.weight', type: Linear, fn: constant_, val: 0.5}]"))
    assert torch.all(exact.enc.linear1.weight == 0.5) and torch.all(exact.head.weight == 0.5)
    assert not torch.any(exact.enc.self_attn.out_proj.weight == 0.5)
    assert type(exact.enc.self_attn.out_proj) is not nn.Linear and isinstance(exact.enc.self_attn.out_proj, nn.Linear)
    inclusive = runner.build(compose(*ENCODER, "init.rules=[{match: '*.weight', module: Linear, fn: constant_, val: 0.5}]"))
    assert torch.all(inclusive.enc.self_attn.out_proj.weight == 0.5)


def test_modifier_rules_edit_in_order_what_the_earlier_rule_set(compose):
    # The notes: uniform init, then `weight.data[:] += 1`, then `weight.data[0, 0] = 42`, and d2l's
    # `weight.data *= weight.data.abs() >= 5` after U(-10, 10).
    base = ["model=mlp", "init.rules=[{match: fc1.weight, fn: uniform_, a: -10, b: 10}]"]
    plain = runner.build(compose(*base)).fc1.weight.detach().clone()
    edited = runner.build(compose(
        "model=mlp",
        "init.rules=[{match: fc1.weight, fn: uniform_, a: -10, b: 10}, {match: fc1.weight, fn: mask, below: 5},"
        " {match: fc1.weight, fn: add, value: 1}, {match: fc1.weight, fn: fill, index: [0, 0], value: 42},"
        " {match: fc1.weight, fn: scale, index: [1], value: -2}]",
    )).fc1.weight.detach()
    expected = plain * (plain.abs() >= 5)
    expected += 1
    expected[0, 0] = 42
    expected[1] *= -2
    assert torch.equal(edited, expected)


@pytest.mark.parametrize("rule, key, text", [
    ("{match: fc1.weight, fn: add}", "init.rules[0].value", "missing: add needs `value`"),
    ("{match: fc1.weight, fn: scale, value: 2, index: [0, 200]}", "init.rules[0].index", "200 is out of range for dim 1 of size 64"),
    ("{match: fc1.bias, fn: fill, value: 2, index: [0, 0]}", "init.rules[0].index", "has 2 entries but the tensor has 1 dims"),
    ("{match: fc9.weight, fn: add, value: 1}", "init.rules[0]", "selects no tensor"),
    ("{match: fc1.weight, fn: mask, below: -1}", "init.rules[0].below", "expected a number >= 0"),
    ("{match: fc1.weight, fn: add, value: 1, std: 2}", "init.rules[0].std", "add takes `value` and optionally `index`"),
    ("{match: '*.weight', type: Linaer, fn: zeros_}", "init.rules[0].type", "unknown layer type 'Linaer'; did you mean 'Linear'?"),
])
def test_bad_modifier_and_type_rules_are_named(compose, rule, key, text):
    with pytest.raises(ConfigError) as error:
        validate(compose("model=mlp", f"init.rules=[{rule}]"))
    assert f"{key}: " in str(error.value) and text in str(error.value)


BN = (
    "model=custom",
    "+model.layers={fc: {type: Linear, in_features: 64, out_features: 32}, bn: {type: BatchNorm1d, num_features: 32},"
    " act: {type: ReLU}, head: {type: Linear, in_features: 32, out_features: 10}}",
    "trainer.max_steps=5",
)


def test_eval_modules_keep_batchnorm_statistics_while_the_rest_trains(compose, tmp_path):
    summary = runner.train(compose(*BN, "model.eval_modules=[bn]"), tmp_path / "kept")
    kept = runner.load(tmp_path / "kept")
    assert torch.equal(kept.bn.running_mean, torch.zeros(32)) and torch.equal(kept.bn.running_var, torch.ones(32))
    assert int(kept.bn.num_batches_tracked) == 0
    assert summary["steps"] == 5
    runner.train(compose(*BN), tmp_path / "moving")
    assert int(runner.load(tmp_path / "moving").bn.num_batches_tracked) == 5  # without it, they move


def test_eval_modules_training_equals_plain_pytorch_with_the_module_in_eval_mode(compose):
    from runner.data.loader import Batches
    from runner.prepare.prepare import prepare
    from runner.training.evaluation import train_mode  # what the loop calls; checked through one step below

    plan = validate(compose(*BN, "model.eval_modules=[bn]", "optim=sgd", "optim.momentum=0"))
    prepared = prepare(plan)
    ours = prepared.model
    reference = copy_model(ours)
    train_mode(ours, plan.eval_modules)
    reference.train()
    reference.bn.eval()  # by hand, as a user would in plain PyTorch
    x, y = next(Batches(prepared.data.train_x, prepared.data.train_y, 64, 0).epoch(0))
    for model in (ours, reference):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    for (name, a), (_, b) in zip(ours.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name
    assert ours.fc.training and not ours.bn.training


def copy_model(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def test_eval_modules_glob_matching_nothing_is_named(compose):
    with pytest.raises(ConfigError) as error:
        validate(compose(*BN, "model.eval_modules=[backbone.*]"))
    assert "model.eval_modules[0]: 'backbone.*' matches no module" in str(error.value)


@pytest.mark.parametrize("layers, tensors, key, text", [
    ("{f: {type: Linear, in_features: 64, out_features: 10}, g: {type: Add, inputs: [f, alpah]}}", "{alpha: {shape: [1]}}",
     "model.layers.g.inputs[1]", "no layer or tensor 'alpah' here; did you mean 'alpha'?"),
    ("{f: {type: Add, inputs: [input, g]}, g: {type: Linear, in_features: 64, out_features: 10}}", "{}",
     "model.layers.f.inputs[1]", "'g' is declared after 'f'; a layer reads only layers declared before it"),
    ("{f: {type: Add, inputs: [input, f]}, g: {type: Linear, in_features: 64, out_features: 10}}", "{}",
     "model.layers.f.inputs[1]", "'f' cannot read its own output (that would be a cycle)"),
    ("{f: {type: Linear, in_features: 64, out_features: 10}, g: {type: Linear, in_features: 64, out_features: 10, inputs: [input]}}", "{}",
     "model.layers.f", "nothing reads the output of 'f' and it is not the output"),
    ("{f: {type: Linear, in_features: 64, out_features: 10}}", "{alpha: {shape: [1]}}",
     "model.tensors.alpha", "nothing reads 'alpha'"),
    ("{f: {type: Linear, in_features: 64, out_features: 10}, g: {type: Add, inputs: [f, alpha]}}", "{alpha: {shape: [3]}}",
     "model.layers", "layer 'g' (Add) failed on inputs f (2, 10), alpha (3,)"),
    ("{f: {type: Linear, in_features: 64, out_features: 10}, g: {type: Add, inputs: [f, alpha]}}", "{alpha: {shape: [0]}}",
     "model.tensors.alpha.shape", "expected a list of sizes >= 1"),
    ("{f: {type: Linear, in_features: 64, out_features: 10}, g: {type: Add, inputs: [f, alpha]}}", "{alpha: {shape: [1], kind: weight}}",
     "model.tensors.alpha.kind", "expected one of parameter, frozen, buffer"),
    ("{f: {type: Linear, in_features: 64, out_features: 10}, g: {type: Add, inputs: [f, alpha]}}", "{alpha: {shape: [1], persistent: false}}",
     "model.tensors.alpha.persistent", "only buffers can be left out of the state_dict"),
    ("{input: {type: Linear, in_features: 64, out_features: 10}}", "{}",
     "model.layers.input", "'input' is reserved"),
    ("{double: {type: ReLU}, fc: {type: Linear, in_features: 64, out_features: 10}}", "{}",
     "model.layers.double", "layer name 'double' is an attribute of every module (torch.nn.Module.double)"),
    ("{f: {type: Linear, in_features: 64, out_features: 10}, g: {type: Add, inputs: [f, output]}}", "{output: {shape: [1]}}",
     "model.tensors.output", "tensor name 'output' is an attribute of every module"),
    ("{f: {type: Linear, in_features: 64, out_features: 10, inputs: []}}", "{}",
     "model.layers.f.inputs", "expected a non-empty list of names"),
    ("{f: {type: Linear, in_features: 64, out_features: 64}, b: {type: Sequential, inputs: [input, f], layers: {g: {type: Linear, in_features: 64, out_features: 10}}}}", "{}",
     "model.layers.b.inputs", "a container takes one input, got 2"),
    ("{f: {type: Linear, in_features: 64, out_features: 10}, g: {type: Linear, in_features: 10, out_features: 10, repeat: 2, inputs: [f, f]}}", "{}",
     "model.layers.g.repeat", "cannot take 2 inputs"),
    ("{f: {type: Linear, in_features: 64, out_features: 10}, g: {type: Linear, in_features: 10, out_features: 10, output: f}}", "{}",
     "model.layers.g.output", "only the containers Sequential and Residual have `output`"),
])
def test_graph_problems_are_named_before_any_work(compose, layers, tensors, key, text):
    with pytest.raises(ConfigError) as error:
        validate(compose("model=custom", f"+model.layers={layers}", f"+model.tensors={tensors}"))
    assert f"{key}: " in str(error.value) and text in str(error.value), str(error.value)


def test_output_names_a_layer_other_than_the_last(compose):
    cfg = compose(
        "model=custom",
        "+model.layers={f: {type: Linear, in_features: 64, out_features: 10}, g: {type: Tanh}, out: {type: Add, inputs: [f, g]}}",
        "model.output=out",
    )
    model = runner.build(cfg)
    x = torch.randn(2, 64)
    torch.testing.assert_close(model(x), model.f(x) + torch.tanh(model.f(x)), rtol=0, atol=0)
    with pytest.raises(ConfigError) as error:
        validate(compose("model=mlp", "model.output=haed"))
    assert "model.output: no layer or tensor 'haed'; did you mean 'head'?" in str(error.value)


def test_a_declared_positional_table_set_by_the_sinusoidal_rule(compose, tmp_path):
    # The notes' Embeddings: an nn.Embedding plus a persistent `pe` buffer, added to the embedded tokens.
    cfg = compose(
        "experiment=transformer_lm",
        "model=custom",
        "+model.layers={embed: {type: Embedding, num_embeddings: 28, embedding_dim: 16},"
        " pos: {type: Add, inputs: [embed, pe]}, rows: {type: TokensToRows}, head: {type: Linear, in_features: 16, out_features: 28}}",
        "+model.tensors={pe: {shape: [32, 16], kind: buffer}}",
        "init.rules=[{match: pe, kind: buffer, fn: sinusoidal}]",
    )
    model = runner.build(cfg)
    # Independently, the formula as the notes write it.
    position = torch.arange(32).unsqueeze(1).float()
    div = torch.exp(torch.arange(0, 16, 2).float() * (-torch.log(torch.tensor(10000.0)) / 16))
    pe = torch.zeros(32, 16)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div)
    torch.testing.assert_close(model.pe, pe)
    assert "pe" in model.state_dict() and "pe" not in dict(model.named_parameters())
    tokens = torch.randint(0, 28, (2, 32))
    torch.testing.assert_close(model(tokens), model.head((model.embed(tokens) + pe).reshape(-1, 16)))


UNCALLED = (
    "model=custom",
    "+model.layers={fc: {type: Linear, in_features: 64, out_features: 32}, act: {type: ReLU},"
    " aux: {type: Linear, in_features: 32, out_features: 5, call: false}, head: {type: Linear, in_features: 32, out_features: 10}}",
)


def test_a_layer_with_call_false_is_registered_saved_and_never_called(compose, tmp_path):
    cfg = compose(*UNCALLED, "trainer.max_steps=4")
    model = runner.build(cfg)
    assert isinstance(model.aux, nn.Linear) and "aux.weight" in model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == 64 * 32 + 32 + 32 * 5 + 5 + 32 * 10 + 10
    x = torch.randn(3, 64)
    out = model(x)
    torch.testing.assert_close(out, model.head(torch.relu(model.fc(x))), rtol=0, atol=0)  # act reads fc, head reads act
    out.sum().backward()
    assert model.aux.weight.grad is None and model.fc.weight.grad is not None
    summary = runner.train(cfg, tmp_path / "run")
    loaded = runner.load(tmp_path / "run")
    from safetensors.torch import load_file  # the library's own reader

    saved = load_file(checkpoint.latest_checkpoint(tmp_path / "run") / "model.safetensors")
    assert torch.equal(saved["aux.weight"], model.aux.weight) and torch.equal(loaded.aux.weight, model.aux.weight)  # never updated
    assert not torch.equal(saved["fc.weight"], model.fc.weight)
    assert weights_sha256(loaded) == summary["weights_sha256"]
    assert "never called" in (tmp_path / "run" / "model.md").read_text()


def test_slice_cuts_a_declared_table_to_the_sequence(compose):
    cfg = compose(
        "model=custom",
        "+model.tensors={table: {shape: [1, 100, 8]}}",
        "+model.layers={grid: {type: Unflatten, dim: 1, unflattened_size: [8, 8]},"
        " rows: {type: Slice, inputs: [table], dim: 1, start: 2, stop: 10}, sum: {type: Add, inputs: [grid, rows]},"
        " flat: {type: Flatten}, head: {type: Linear, in_features: 64, out_features: 10}}",
        "init.rules=[{match: table, fn: normal_}]",
    )
    model = runner.build(cfg)
    x = torch.randn(2, 64)
    want = model.head((x.reshape(2, 8, 8) + model.table[:, 2:10]).reshape(2, 64))
    torch.testing.assert_close(model(x), want, rtol=0, atol=0)


def test_gain_auto_skips_a_layer_that_is_never_called(compose):
    cfg = compose(
        "model=custom",
        "+model.layers={fc: {type: Linear, in_features: 64, out_features: 64}, aux: {type: Linear, in_features: 64, out_features: 64, call: false},"
        " act: {type: ReLU}, head: {type: Linear, in_features: 64, out_features: 10}}",
        "init.rules=[{match: fc.weight, fn: xavier_uniform_, gain: auto}]",
    )
    w = runner.build(cfg).fc.weight
    bound = math.sqrt(6 / (64 + 64))  # xavier_uniform_'s bound at gain 1; ReLU's gain is sqrt(2)
    assert bound < w.abs().max() <= math.sqrt(2) * bound


AXES = (
    "model=custom",
    "+model.layers={grid: {type: Unflatten, dim: -1, unflattened_size: [8, 8]}, cut: {type: Slice, dim: -1, stop: 4},"
    " joined: {type: Concat, dim: -1, inputs: [cut, cut]}, flat: {type: Flatten},"
    " head: {type: Linear, in_features: 64, out_features: 10}, probs: {type: Softmax, dim: -1}}",
)


def test_dim_is_an_axis_negative_counts_from_the_end_and_out_of_range_is_named(compose):
    model = runner.build(compose(*AXES))
    x = torch.randn(2, 64)
    g = x.reshape(2, 8, 8)[:, :, :4]
    torch.testing.assert_close(model(x), torch.softmax(model.head(torch.cat([g, g], -1).reshape(2, 64)), -1), rtol=0, atol=0)
    with pytest.raises(ConfigError, match=r"layer 'cut' \(Slice\) failed on inputs grid \(2, 8, 8\): dim 3 is out of range"):
        runner.build(compose(*AXES, "model.layers.cut.dim=3"))
    with pytest.raises(ConfigError, match=r"layer 'joined' \(Concat\) failed on inputs cut \(2, 8, 4\), cut \(2, 8, 4\): dim -4 is out of range"):
        runner.build(compose(*AXES, "model.layers.joined.dim=-4"))
