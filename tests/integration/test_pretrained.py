"""`fn: pretrained`: values from safetensors files and runs, rename, ties (a file holding both names), buffers, dtypes, the fine-tune preset, bad files."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import runner
from conftest import run_cli
from runner.errors import ConfigError
from runner.run.directory import read_metrics


def _sequential() -> nn.Sequential:
    """A plain PyTorch model with the mlp's shapes, its own init: the weights a user brings."""
    torch.manual_seed(123)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))


def _rule(path, match: str, rename: str = "", **extra) -> str:
    fields = {"match": f"'{match}'", "fn": "pretrained", "path": str(path), **extra}
    if rename:
        fields["rename"] = rename
    return "{" + ", ".join(f"{k}: {v}" for k, v in fields.items()) + "}"


def test_a_plain_sequential_fills_the_mlp_through_rename(compose, tmp_path):
    sequential = _sequential()
    save_file(sequential.state_dict(), tmp_path / "seq.safetensors")
    file = tmp_path / "seq.safetensors"
    rules = [_rule(file, "fc1.*", "[fc1, 0]"), _rule(file, "fc2.*", "[fc2, '2']"), _rule(file, "head.*", "[head, '4']")]
    model = runner.build(compose(f"init.rules=[{', '.join(rules)}]"))
    x = torch.randn(7, 64)
    with torch.no_grad():
        assert torch.equal(model(x), sequential(x))


def test_a_prefix_with_a_trailing_dot_means_the_same_prefix(compose, tmp_path):
    sequential = _sequential()
    save_file(sequential.state_dict(), tmp_path / "seq.safetensors")
    file = tmp_path / "seq.safetensors"
    plain, dotted = (runner.build(compose(f"init.rules=[{_rule(file, 'fc1.*', rename)}]")) for rename in ("[fc1, 0]", "['fc1.', '0.']"))
    for name, theirs in (("fc1.weight", "0.weight"), ("fc1.bias", "0.bias")):
        assert torch.equal(plain.state_dict()[name], sequential.state_dict()[theirs]), name
        assert torch.equal(dotted.state_dict()[name], sequential.state_dict()[theirs]), name


def _tied_file(path, weights: dict, **replaced) -> str:
    """Saves a model's weights (tied names stored separately, as nanoGPT's checkpoint does) with some replaced."""
    save_file({k: v.clone().contiguous() for k, v in {**weights, **replaced}.items()}, path)
    return str(path)


def test_a_file_holding_both_names_of_a_tie_must_hold_one_tensor(compose, tmp_path):
    # transformer_lm ties head.weight to embed.weight: a file with both keys is read once, so they must agree.
    overrides = ("experiment=transformer_lm",)
    weights = {k: v + 0.5 for k, v in runner.build(compose(*overrides)).state_dict().items()}
    equal = _tied_file(tmp_path / "equal.safetensors", weights)
    model = runner.build(compose(*overrides, f"init.rules=[{_rule(equal, '*')}]"))
    assert model.head.weight is model.embed.weight and torch.equal(model.head.weight, weights["embed.weight"])
    different = _tied_file(tmp_path / "different.safetensors", weights, **{"head.weight": weights["embed.weight"] + 1})
    with pytest.raises(ConfigError) as raised:
        runner.train(compose(*overrides, f"init.rules=[{_rule(different, '*')}]"), tmp_path / "run")
    assert f"init.rules[0]: {different} holds two different tensors, [embed.weight] for 'embed.weight' and [head.weight] for 'head.weight'" in str(raised.value)
    assert not (tmp_path / "run").exists()


def test_a_transposed_tie_compares_the_file_s_target_with_the_transpose(compose, tmp_path):
    # autoencoder: dec.weight (64, 32) reads enc.weight (32, 64) transposed.
    weights = {k: v for k, v in runner.build(compose("experiment=autoencoder")).state_dict().items() if ".parametrizations." not in k}
    source = weights["enc.weight"] + 0.5
    equal = _tied_file(tmp_path / "equal.safetensors", weights, **{"enc.weight": source, "dec.weight": source.T})
    model = runner.build(compose("experiment=autoencoder", f"init.rules=[{_rule(equal, '*')}]"))
    assert torch.equal(model.enc.weight, source) and torch.equal(model.dec.weight, source.T)
    # The same shape and the same numbers, laid out untransposed: not the tensor dec.weight reads.
    different = _tied_file(tmp_path / "different.safetensors", weights, **{"enc.weight": source, "dec.weight": source.reshape(64, 32)})
    done = run_cli("experiment=autoencoder", f"init.rules=[{_rule(different, '*')}]", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert (f"init.rules[0]: {different} holds two different tensors, [enc.weight] for 'enc.weight' and [dec.weight] for 'dec.weight', "
            "but here 'dec.weight' is 'enc.weight' transposed on dims [0, 1]") in done.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_provenance_names_the_file_and_key(compose, tmp_path):
    save_file(_sequential().state_dict(), tmp_path / "seq.safetensors")
    file = tmp_path / "seq.safetensors"
    runner.train(compose(f"init.rules=[{_rule(file, 'fc1.*', '[fc1, 0]')}]", "trainer.max_steps=1"), tmp_path / "run")
    rows = {line.split("|")[1].strip(): line.split("|")[6].strip() for line in (tmp_path / "run" / "tensors.md").read_text().splitlines()[2:] if line.startswith("| ")}
    assert rows["fc1.weight"] == f"pretrained {file} [0.weight]" and rows["fc1.bias"] == f"pretrained {file} [0.bias]"
    assert rows["head.weight"] == "pytorch default"


def test_a_modifier_applies_after_the_pretrained_values(compose, tmp_path):
    sequential = _sequential()
    save_file(sequential.state_dict(), tmp_path / "seq.safetensors")
    rules = f"[{_rule(tmp_path / 'seq.safetensors', 'fc1.weight', '[fc1, 0]')}, {{match: fc1.weight, fn: scale, value: 2.0}}]"
    model = runner.build(compose(f"init.rules={rules}"))
    assert torch.equal(model.fc1.weight, 2.0 * sequential[0].weight)


def test_float64_weights_come_exactly_from_a_float64_file(compose, tmp_path):
    weights = {k: v.double() + 1e-12 for k, v in _sequential().state_dict().items()}  # bits float32 cannot hold
    save_file(weights, tmp_path / "seq64.safetensors")
    model = runner.build(compose(f"init.rules=[{_rule(tmp_path / 'seq64.safetensors', 'fc1.*', '[fc1, 0]')}]", "trainer.dtype=float64"))
    assert model.fc1.weight.dtype == torch.float64 and torch.equal(model.fc1.weight, weights["0.weight"])


def test_a_tied_run_fills_a_tied_model_and_the_tie_holds(compose, tmp_path):
    runner.train(compose("model=tied_mlp", "trainer.max_steps=5"), tmp_path / "base")
    model = runner.build(compose("model=tied_mlp", f"init.rules=[{_rule(tmp_path / 'base', '*')}]"))
    trained = runner.load(tmp_path / "base")
    assert model.shared.weight is model.shared_again.weight
    for name, tensor in trained.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_a_buffer_can_come_from_a_file(compose, tmp_path):
    projection = torch.randn(128, 64)
    save_file({"projection": projection}, tmp_path / "proj.safetensors")
    rule = _rule(tmp_path / "proj.safetensors", "proj.weight", "[proj.weight, projection]", kind="buffer")
    model = runner.build(compose("model=frozen_features", f"init.rules=[{rule}]"))
    assert "proj.weight" in dict(model.named_buffers()) and torch.equal(model.proj.weight, projection)


def test_integer_buffers_keep_their_own_dtype(compose, tmp_path):
    # BatchNorm's num_batches_tracked is int64 whatever trainer.dtype is: it comes across as it is.
    runner.train(compose("model=cnn", "trainer.max_steps=2"), tmp_path / "base")
    model = runner.build(compose("model=cnn", f"init.rules=[{_rule(tmp_path / 'base', '*', kind='any')}]"))
    trained = runner.load(tmp_path / "base").state_dict()
    assert trained["bn1.num_batches_tracked"].item() == 2
    for name, tensor in trained.items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_the_finetune_preset_trains_only_the_head_of_a_trained_run(compose, tmp_path):
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    for args in ([f"hydra.run.dir={base}", "trainer.epochs=3"],
                 ["experiment=finetune", f"init.rules.0.path={base}", f"hydra.run.dir={tuned}", "trainer.epochs=2"]):
        done = run_cli(*args, "trainer.progress=off", "trainer.tensorboard=false", "trainer.plots=false", timeout=300)
        assert done.returncode == 0, done.stderr
    before, after = runner.load(base), runner.load(tuned)
    for name in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"):  # taken from the run, then frozen
        assert torch.equal(after.state_dict()[name], before.state_dict()[name]), name
    assert not torch.equal(after.head.weight, before.head.weight)
    # The trained features are what made the difference: the same head on the frozen default-init body learns less.
    fresh = runner.train(compose("experiment=finetune", "init.rules=[{match: head.weight, fn: xavier_uniform_}, {match: head.bias, fn: zeros_}]",
                                 "trainer.epochs=2"), tmp_path / "fresh")
    tuned_accuracy = [r for r in read_metrics(tuned / "metrics.jsonl") if r["kind"] == "eval"][-1]["val_accuracy"]
    assert tuned_accuracy > fresh["val_accuracy"] + 0.1


def test_a_run_fine_tuned_from_a_file_loads_without_the_file(compose, tmp_path):
    save_file(_sequential().state_dict(), tmp_path / "seq.safetensors")
    runner.train(compose(f"init.rules=[{_rule(tmp_path / 'seq.safetensors', 'fc1.*', '[fc1, 0]')}]", "trainer.max_steps=3"), tmp_path / "run")
    trained = runner.load(tmp_path / "run").state_dict()
    (tmp_path / "seq.safetensors").unlink()
    assert all(torch.equal(a, b) for a, b in zip(runner.load(tmp_path / "run").state_dict().values(), trained.values()))


def _bad_files(tmp_path):
    weights = _sequential().state_dict()
    save_file(weights, tmp_path / "seq.safetensors")
    save_file({k: v.half() for k, v in weights.items()}, tmp_path / "half.safetensors")
    torch.save(weights, tmp_path / "seq.pt")
    torch.save(weights, tmp_path / "disguised.safetensors")  # a pickle under a safetensors name
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    (tmp_path / "empty_dir").mkdir()


@pytest.mark.parametrize("rule, message", [
    ("{match: 'fc1.*', fn: pretrained, path: SEQ, rename: [fc1, 1]}", "SEQ has no tensor '1.weight' for 'fc1.weight' (nor 1 more the rule sets); did you mean"),
    ("{match: 'fc2.*', fn: pretrained, path: SEQ, rename: [fc2, 0]}", "SEQ [0.weight] has shape (128, 64); 'fc2.weight' has (64, 128)"),
    ("{match: 'fc1.*', fn: pretrained, path: HALF, rename: [fc1, 0]}", "HALF [0.weight] is float16; 'fc1.weight' is float32 (trainer.dtype): convert the file"),
    ("{match: 'fc1.*', fn: pretrained, path: DIR/seq.pt, rename: [fc1, 0]}", "seq.pt is a pickle (torch.save) file; only safetensors is read"),
    ("{match: 'fc1.*', fn: pretrained, path: DIR/disguised.safetensors}", "disguised.safetensors is a pickle (torch.save) file"),
    ("{match: 'fc1.*', fn: pretrained, path: DIR/junk.safetensors}", "junk.safetensors is not a readable safetensors file"),
    ("{match: 'fc1.*', fn: pretrained, path: DIR/none.safetensors}", "no such file or directory"),
    ("{match: 'fc1.*', fn: pretrained, path: DIR/empty_dir}", "is a directory but neither a run directory nor a checkpoint of ours"),
    ("{match: '*', fn: pretrained, path: SEQ, rename: [fc1, 0]}", "init.rules[0].rename: the rule sets 'fc2.weight', 'fc2.bias', 'head.weight' and 1 more, which are not 'fc1' nor under 'fc1.'"),
    ("{match: '*', fn: pretrained, path: SEQ, rename: ['fc1.', '0.']}", "init.rules[0].rename: the rule sets 'fc2.weight', 'fc2.bias', 'head.weight' and 1 more, which are not 'fc1' nor under 'fc1.'"),
    ("{match: 'fc1.*', fn: pretrained, path: SEQ, rename: fc1}", "init.rules[0].rename: expected [<prefix in this model>, <prefix in the file>]"),
    ("{match: 'fc1.*', fn: pretrained}", "init.rules[0].path: missing: pretrained requires `path`"),
])
def test_bad_pretrained_input_is_a_config_error_before_any_work(compose, tmp_path, rule, message):
    _bad_files(tmp_path)
    subs = {"SEQ": str(tmp_path / "seq.safetensors"), "HALF": str(tmp_path / "half.safetensors"), "DIR": str(tmp_path)}
    for old, new in subs.items():
        rule, message = rule.replace(old, new), message.replace(old, new)
    with pytest.raises(ConfigError) as raised:
        runner.train(compose(f"init.rules=[{rule}]"), tmp_path / "run")
    assert message in str(raised.value)
    assert not (tmp_path / "run").exists()


def test_the_cli_exits_2_for_a_pickle_file_and_writes_nothing(tmp_path):
    torch.save(_sequential().state_dict(), tmp_path / "seq.pt")
    done = run_cli(f"init.rules=[{{match: 'fc1.*', fn: pretrained, path: {tmp_path / 'seq.pt'}, rename: [fc1, 0]}}]", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 2 and "only safetensors is read" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "tensors.md").exists()


def test_a_damaged_checkpoint_is_refused_by_its_manifest(compose, tmp_path):
    runner.train(compose("trainer.max_steps=2"), tmp_path / "base")
    latest = sorted((tmp_path / "base" / "checkpoints").iterdir())[-1]
    data = bytearray((latest / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # a flipped bit in the last tensor's bytes: the header still reads
    (latest / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(runner.errors.RunError, match="SHA-256 does not match the manifest"):
        runner.build(compose(f"init.rules=[{_rule(tmp_path / 'base', 'fc1.*')}]"))
    shutil.rmtree(tmp_path / "base")
