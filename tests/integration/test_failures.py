"""What happens when things go wrong: one clear message and an exit status, nothing lost, nothing run.

The table below is docs/failures.md's table (tools/failures_page.py writes it from TABLE): each row is a bad input, the exit status the CLI gives it
(2: config, 1: runtime) and the words its one message must contain.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import struct

import numpy as np
import pytest
import torch

import runner
from conftest import QUIET, Payload, run_cli
from runner.errors import ConfigError, RunError, report_errors
from runner.run import checkpoint
from runner.run.directory import RunLock


def exit_of(capsys, work) -> tuple[int, str]:
    """Runs work the way the CLI does; returns (exit status, stderr)."""
    with pytest.raises(SystemExit) as leaving:
        report_errors(work)
    return leaving.value.code, capsys.readouterr().err


def files(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    np.savez(bad / "wide.npz", features=np.zeros((20, 5)), targets=np.zeros(20, dtype=np.int64))
    np.savez(bad / "nokey.npz", x=np.zeros((20, 4)))
    np.savez(bad / "cube.npz", features=np.zeros((20, 4, 2)), targets=np.zeros(20, dtype=np.int64))
    np.savez(bad / "classes.npz", features=np.zeros((20, 4)), targets=np.arange(20))
    np.savez(bad / "floaty.npz", features=np.zeros((20, 4)), targets=np.linspace(0, 1, 20))
    np.savez(bad / "nan.npz", features=np.full((20, 4), np.nan), targets=np.zeros(20, dtype=np.int64))
    np.savez(bad / "rows.npz", features=np.zeros((20, 4)), targets=np.zeros(19, dtype=np.int64))
    (bad / "text.csv").write_text("a,b,y\n1,2,0\n3,x,1\n")
    (bad / "one.csv").write_text("1\n2\n")
    (bad / "garbage.npz").write_bytes(b"not a zip file at all")
    torch.save({"features": Payload(str(tmp_path / "PAYLOAD_RAN")), "targets": torch.zeros(3)}, bad / "evil.pt")
    (bad / "data.txt").write_text("1,2\n")
    return bad


FILE = ["data=file", "data.num_features=4", "data.num_outputs=2"]
TABLE = [
    # (overrides, exit status, words the message must contain)
    (["model.layers.fc1.type=Linaer"], 2, "model.layers.fc1.type: unknown layer type 'Linaer'; did you mean 'Linear'?"),
    (["+model.layers.fc1.out_feature=3"], 2, "model.layers.fc1.out_feature: unexpected argument for Linear; did you mean 'out_features'"),
    (["~model.layers.fc1.out_features"], 2, "model.layers.fc1.out_features: missing: Linear requires `out_features`"),
    (["model.layers.fc2.out_features=-4"], 2, "model.layers.fc2.out_features: expected a size >= 0, got -4"),
    (["model.layers.fc2.out_features=0"], 2, "model.layers: layer 'head' (Linear) failed on its input of shape (2, 0)"),
    (["model.layers.fc2.in_features=100"], 2, "model.layers: layer 'fc2' (Linear) failed on its input of shape (2, 128)"),
    (["model.layers.head.out_features=7"], 2, "data.num_outputs=10"),
    (["model.layers.act1.type=Sequential"], 2, "model.layers.act1.layers: expected a non-empty mapping"),
    (["model=tied_mlp", "model.layers.shared_again.shared=head"], 2, "model.layers.shared_again.shared: 'head' is not an earlier layer"),
    (["model=tied_mlp", "model.layers.shared_again.shared=shared_again"], 2, "'shared_again' is not an earlier layer"),
    (["+model.layers.fc1.repeat=0"], 2, "model.layers.fc1.repeat: expected a positive integer, got 0"),
    (["+model.layers.fc1._target_=os.system"], 2, "model.layers.fc1._target_: unexpected argument for Linear"),
    (["init=mixed", "model=cnn"], 2, "init.rules[0]: selects no tensor (fc1.weight)"),
    (["init.rules=[{fn: xavier_uniformm_}]"], 2, "init.rules[0].fn: unknown init function 'xavier_uniformm_'; did you mean 'xavier_uniform_'"),
    (["init.rules=[{fn: normal_, sdt: 1}]"], 2, "init.rules[0].sdt: normal_ takes no argument 'sdt'; did you mean 'std'?"),
    (["init.rules=[{regex: 'fc(', fn: ones_}]"], 2, "init.rules[0].regex: invalid regular expression"),
    (["init.rules=[{fn: xavier_uniform_, gain: rellu}]"], 2, "init.rules[0].gain"),
    (["experiment=autoencoder", "model.ties=[{target: dec.weight, source: enc.wieght}]"], 2, "model.ties[0].source: no parameter 'enc.wieght'; did you mean 'enc.weight'"),
    (["experiment=autoencoder", "model.ties=[{target: dec.weight, source: enc.weight}]"], 2, "model.ties[0]: shape mismatch"),
    (["experiment=autoencoder", "model.ties=[{target: dec.bias, source: enc.bias, transpose: true}]"], 2, "model.ties[0].transpose: `true` transposes a 2-D tensor"),
    (["experiment=transformer_lm", "model.frozen=[embed.weight]"], 2, "model.frozen[0]: 'embed.weight' freezes"),
    (["trainer.device=cuda:7"], 2, "trainer.device: device 'cuda:7' is not available here; available: cpu"),
    (["trainer.device=tpu"], 2, "trainer.device: expected auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
    (["trainer.dtype=float8"], 2, "trainer.dtype: expected one of float32, float64, bfloat16, got 'float8'"),
    (["optim.lr=0"], 2, "optim.lr: expected a number > 0; 0 is allowed only as a default that no tensor uses"),
    (["optim.lr=-1"], 2, "optim.lr: expected a number > 0, got -1"),
    (["optim=sgd", "optim.lr=-0.1", "optim.momentum=1.5"], 2, "optim.momentum: expected a number in [0, 1), got 1.5"),
    (["optim.name=adamm"], 2, "optim.name: unknown optimizer 'adamm'; did you mean 'adam'"),
    (["optim.scheduler.name=cosin"], 2, "optim.scheduler.name: expected one of none, step, cosine, warmup_cosine, got 'cosin'; did you mean 'cosine'?"),
    (["optim.clip_grad_norm=0"], 2, "optim.clip_grad_norm: expected a number > 0"),
    (["optim.param_groups=[{match: 'head.*'}]"], 2, "optim.param_groups: 'fc1.weight' is in no group"),
    (["trainer.batch_size=0"], 2, "trainer.batch_size: expected a number > 0, got 0"),
    (["trainer.epochs=0"], 2, "trainer.epochs: expected a number > 0, got 0"),
    (["trainer.max_steps=-1"], 2, "trainer.max_steps: expected a number >= 0, got -1"),
    (["loss.name=hinge"], 2, "loss.name: expected one of auto, cross_entropy, mse, l1, smooth_l1, huber, got 'hinge'"),
    (["loss.name=mse"], 2, "loss.name: mse needs numbers to regress to as targets; task 'classification' has class ids (expected auto, cross_entropy)"),
    (["loss.label_smoothing=1.5"], 2, "loss.label_smoothing: expected a number from 0 to 1, got 1.5"),
    (["loss.beta=0.5"], 2, "loss.beta: smooth_l1 takes it, not cross_entropy; cross_entropy takes label_smoothing"),
    (["trainer.loss=mse"], 2, "trainer.loss: moved: set loss.name instead"),
    (["trainer.strategy=ddp"], 2, "trainer.strategy: ddp needs torchrun"),
    (["data.val_fraction=1.0"], 2, "data.val_fraction: expected a fraction strictly between 0 and 1, got 1.0"),
    (["data=synthetic", "data.num_features=2", "data.num_outputs=1000"], 2, "data: could not make the synthetic data"),
    (["data=file", "data.num_features=4", "data.num_outputs=2"], 2, "data.path: required when data.name=file"),
    ([*FILE, "data.path=/nonexistent/d.npz"], 2, "data.path: no such file: /nonexistent/d.npz"),
    ([*FILE, "data.path={bad}/data.txt"], 2, "data.path: expected a .npz, .csv or .pt file"),
    ([*FILE, "data.path={bad}/wide.npz"], 2, "data.num_features: is 4 but the data has 5 features per sample"),
    ([*FILE, "data.path={bad}/nokey.npz"], 2, "data.features_key: {bad}/nokey.npz has no array 'features'; it has: x"),
    ([*FILE, "data.path={bad}/cube.npz"], 2, "data.path: features of shape (20, 4, 2) are not rows (samples, features): set data.shape to one sample's shape, [4, 2]"),
    ([*FILE, "data.path={bad}/classes.npz"], 2, "data.num_outputs: is 2 but class ids run from 0 to 19"),
    ([*FILE, "data.path={bad}/floaty.npz"], 2, "classification targets must be integer class ids"),
    ([*FILE, "data.path={bad}/nan.npz"], 2, "data.path: features contain NaN or Inf"),
    ([*FILE, "data.path={bad}/rows.npz"], 2, "data.path: 20 feature rows but 19 targets"),
    ([*FILE, "data.path={bad}/text.csv"], 2, "non-numeric value"),
    ([*FILE, "data.path={bad}/one.csv"], 2, "expected feature columns then a target column, got 1 column(s)"),
    ([*FILE, "data.path={bad}/garbage.npz"], 2, "data.path: could not read"),
    ([*FILE, "data.path={bad}/evil.pt"], 2, "data.path: could not read"),
    (["trainer.log_every=0"], 2, "trainer.log_every: expected a number > 0, got 0"),
    (["trainer.hist_every=-1"], 2, "trainer.hist_every: expected a number >= 0, got -1"),
    (["trainer.ckpt_every=-5"], 2, "trainer.ckpt_every: expected a number >= 0, got -5"),
    (["trainer.keep_last=0"], 2, "trainer.keep_last: expected a number > 0, got 0"),
    (["trainer.threads=-2"], 2, "trainer.threads: expected a number >= 0, got -2"),
    (["trainer.progress=bars"], 2, "trainer.progress: expected one of auto, bar, log, off, got 'bars'; did you mean 'bar'"),
    (["optim.scheduler.step_size=0"], 2, "optim.scheduler.step_size: expected an integer >= 1, got 0"),
    (["optim.scheduler.gamma=2"], 2, "optim.scheduler.gamma: expected 0 < gamma <= 1, got 2.0"),
    (["optim.scheduler.warmup_steps=-1"], 2, "optim.scheduler.warmup_steps: expected an integer >= 0, got -1"),
    (["optim.scheduler.min_lr=-1"], 2, "optim.scheduler.min_lr: expected a number >= 0, got -1.0"),
    (["optim.betas=[0.9]"], 2, "optim.betas: expected 2 numbers in [0, 1), got [0.9]"),
    (["optim.param_groups=[{match: 'head.*', lrr: 1}, {}]"], 2, "optim.param_groups[0].lrr: adam takes no argument 'lrr'; did you mean 'lr'"),
    (["optim.param_groups=[{match: 'head.*', lr: 0}, {}]"], 2, "optim.param_groups[0].lr: expected a number > 0, got 0"),
    (["experiment=autoencoder", "model.buffers=[{match: enc.bias, persistant: true}]"], 2, "model.buffers[0]: expected {match: <glob>, persistent: true}"),
    (["experiment=autoencoder", "model.buffers=[enc.weight]"], 2, "model.buffers[0].match: 'enc.weight' is tied"),
    (["experiment=autoencoder", "model.ties=[{target: dec.weight, source: enc.weight, transpose: true, flip: 1}]"], 2, "model.ties[0].flip: unknown key"),
    (["init.rules=[5]"], 2, "init.rules[0]: expected a mapping like"),
    (["init.strict=true", "init.rules=[{match: '*.weight', fn: ones_}]"], 2, "init.rules: strict: no rule sets trainable tensor 'fc1.bias'"),
    (["data.task=clasification"], 2, "data.task: expected one of classification, regression, reconstruction, language_model, got 'clasification'; did you mean 'classification'"),
    (["data.block_size=32"], 2, "data.block_size: data.name=digits does not read it (it is for data.name=tokens); remove it"),
    (["data.root=/tmp"], 2, "data.root: data.name=digits does not read it (it is for data.name=mnist or cifar10 or cifar100 or image_folder or tokens)"),
    (["data.name=digitz"], 2, "data.name: expected one of digits, synthetic, file, parquet, text, mnist, cifar10, cifar100, image_folder, tokens, got 'digitz'; did you mean 'digits'"),
    (["data=synthetic", "data.name=text"], 2, "data.num_outputs: the text data's vocabulary has 28 characters, got 4"),
    (["resume=/nonexistent/run"], 2, "resume: no such run directory: /nonexistent/run"),
    (["resume={bad}"], 1, "no checkpoint found"),
    (["model.layers.fc1.in_features=${data.nope}"], 2, "model.layers.fc1.in_features"),
    (["model.layers.fc1.in_features=${eval:'1+1'}"], 2, "model.layers.fc1.in_features"),
    # Configs mean what they say: unknown keys with or without `+`, values inside lists, arguments per optimizer.
    (["+trainer.frobnicate=1"], 2, "trainer.frobnicate: unknown key"),
    (["+optim.epz=1e-8"], 2, "optim.epz: adam takes no argument 'epz'; did you mean 'eps'"),
    (["trainer.grad_stats=3"], 2, "trainer.grad_stats: expected true or false, got 3"),
    (["trainer.activation_stats=2"], 2, "trainer.activation_stats: expected true or false, got 2"),
    (["trainer.watch=[fc9]"], 2, "trainer.watch[0]: 'fc9' matches no layer or tensor; did you mean 'fc2' or 'fc1'?"),
    (["trainer.early_stopping={metric: val_acc}"], 2, "trainer.early_stopping.metric: 'val_acc' is not a metric of this run; did you mean 'val_accuracy'?"),
    (["trainer.early_stopping={patience: 0}"], 2, "trainer.early_stopping.patience: expected a whole number of evaluations >= 1, got 0"),
    (["trainer.ema_decay=1.5"], 2, "trainer.ema_decay: expected null or a number strictly between 0 and 1 (0.999 is common), got 1.5"),
    (["init.rules=[{match: 'fc1.*', fn: pretrained, path: /nonexistent/w.safetensors}]"], 2, "init.rules[0].path: no such file or directory: /nonexistent/w.safetensors"),
    (["trainer.autocast=float16", "trainer.device=cpu"], 2, "trainer.autocast: float16 autocast needs a CUDA device (trainer.device is cpu); use trainer.autocast=bfloat16 on the CPU"),
    (["+model.layers={fc: {type: Linear, in_features: 64, out_features: 10}}"], 2, "model.layers: the override was merged into the existing mapping"),
    (["init.rules=[{fn: normal_, std: -1}]"], 2, "init.rules[0].std: expected a number > 0, got -1"),
    (["init.rules=[{fn: kaiming_uniform_, mode: fan_inn}]"], 2, "init.rules[0].mode: expected one of fan_in, fan_out, got 'fan_inn'; did you mean 'fan_in'"),
    (["init.rules=[{fn: orthogonal_}]"], 2, "init.rules[0]: orthogonal_ needs a tensor with at least 2 dims; it reaches 'fc1.bias' (128,)"),
    (["init.rules=[{fn: zeros_}, {fn: ones_}]"], 2, "init.rules[0]: selects 'fc1.weight', 'fc1.bias', 'fc2.weight' and 3 more, but later rules set all of them (init.rules[1])"),
    (["optim.momentum=0.9"], 2, "optim.momentum: adam takes no argument 'momentum'"),
    (["optim.name=rmsprop"], 2, "optim.betas: rmsprop takes no argument 'betas'; it takes: lr, alpha, eps"),
    (["optim=sgd", "optim.param_groups=[{match: 'head.*', nesterov: true, momentum: 0}, {}]"], 2, "optim.param_groups[0].nesterov: Nesterov momentum needs momentum > 0 and dampening 0"),
    (["optim.param_groups=[{name: a, match: 'head.*'}, {name: a}]"], 2, "optim.param_groups[1].name: 'a' already names optim.param_groups[0]"),
    (["model.frozen=['*']"], 2, "model: the model has no trainable tensor"),
    (["model=transformer_lm"], 2, "(this model is meant for other data: experiment=transformer_lm)"),
    (["trainer.batch_size=0", "data=file", "data.path={bad}/absent.npz", "data.num_features=4", "data.num_outputs=2"], 2, "config errors (2)"),
    # The model language: graphs, declared tensors, N-D ties, exact-type and modifier rules, eval_modules.
    (["+model.layers.head.inputs=[act1, alpah]"], 2, "model.layers.head.inputs[1]: no layer or tensor 'alpah' here"),
    (["+model.layers.fc2.inputs=[head]"], 2, "model.layers.fc2.inputs[0]: 'head' is declared after 'fc2'"),
    (["+model.tensors={alpha: {shape: [1]}}"], 2, "model.tensors.alpha: nothing reads 'alpha'"),
    (["+model.tensors={alpha: {shape: [1], kind: buffr}}"], 2, "model.tensors.alpha.kind: expected one of parameter, frozen, buffer, got 'buffr'; did you mean 'buffer'"),
    (["+model.tensors={alpha: {shape: [3]}}", "+model.layers.scaled={type: Mul, inputs: [head, alpha]}"], 2, "layer 'scaled' (Mul) failed on inputs head (2, 10), alpha (3,)"),
    (["model=unet"], 2, "the model's output has shape (2, 64) for input (2, 64); the classification task needs (2, 10) (data.num_outputs=10) (this model is meant for other data: experiment=unet)"),
    (["+model.layers.fc2.call=maybe"], 2, "model.layers.fc2.call: expected true or false, got 'maybe'"),
    (["+model.layers.fc2.call=false", "+model.layers.act2.inputs=[fc2]"], 2, "model.layers.act2.inputs[0]: 'fc2' has `call: false`: it is never called, so it has no output to read"),
    (["+model.layers.aux={type: Linear, in_features: 4, out_features: 4, call: false, inputs: [fc1]}"], 2, "model.layers.aux.inputs: a layer with `call: false` is never called, so it reads nothing; drop `inputs`"),
    (["model.output=haed"], 2, "model.output: no layer or tensor 'haed'; did you mean 'head'"),
    (["model.eval_modules=[bn1]"], 2, "model.eval_modules[0]: 'bn1' matches no module"),
    (["experiment=autoencoder", "model.ties=[{target: dec.weight, source: enc.weight, transpose: [0, 2]}]"], 2, "model.ties[0].transpose: dims [0, 2] are out of range"),
    (["init.rules=[{match: '*.weight', type: Linaer, fn: zeros_}]"], 2, "init.rules[0].type: unknown layer type 'Linaer'; did you mean 'Linear'"),
    (["init.rules=[{match: fc1.weight, fn: add, index: [0, 999], value: 1}]"], 2, "init.rules[0].index: index [0, 999]: 999 is out of range for dim 1 of size 64"),
    (["init.rules=[{match: fc1.weight, fn: scale}]"], 2, "init.rules[0].value: missing: scale needs `value`"),
]


@pytest.mark.parametrize(("overrides", "status", "words"), TABLE, ids=[" ".join(r[0])[:60] for r in TABLE])
def test_bad_input_table(capsys, tmp_path, overrides, status, words):
    bad = files(tmp_path)
    overrides = [o.replace("{bad}", str(bad)) for o in overrides]
    code, err = exit_of(capsys, lambda: runner.train(runner.compose([*QUIET, *overrides]), tmp_path / "run"))
    assert code == status, err
    assert words.replace("{bad}", str(bad)) in err
    assert "Traceback" not in err
    assert not (tmp_path / "PAYLOAD_RAN").exists()
    assert not (tmp_path / "run" / "summary.json").exists()


def test_the_table_covers_at_least_thirty_distinct_inputs():
    assert len({tuple(r[0]) for r in TABLE}) >= 30


@pytest.mark.parametrize(("args", "words"), [  # the messages docs/failures.md shows (tools/failures_page.py HYDRA_ROWS)
    (["trainer.epoch=3"], "trainer.epoch: unknown key; did you mean 'epochs'?"),
    (["trainer.epochs=many"], "trainer.epochs: Value 'many' of type 'str' could not be converted to Integer"),
    (["modell=cnn"], "modell: unknown key; did you mean 'model'?"),
    (["trainer.compile=maybe"], "trainer.compile: expected true or false, got 'maybe'"),
    (["trainer.grad_stats=maybe"], "trainer.grad_stats: expected true or false, got 'maybe'"),
    (["model=cnnn"], "model: no option 'cnnn' in model; did you mean 'cnn'?"),
    (["trainer.watch=fc1"], "trainer.watch: Invalid value assigned: str is not a ListConfig, list or tuple."),
])
def test_cli_compose_errors_exit_2(tmp_path, args, words):
    result = run_cli(*args, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2, result.stderr
    assert words in result.stderr and "Traceback" not in result.stderr


def test_cli_runtime_error_exits_1(tmp_path):
    result = run_cli(f"resume={tmp_path}", f"hydra.run.dir={tmp_path / 'x'}")
    assert result.returncode == 1
    assert "no checkpoint found" in result.stderr and "Traceback" not in result.stderr


def test_a_second_run_into_the_same_directory_is_refused(compose, tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunError, match=f"another run \\(pid {os.getpid()}\\) is writing into this directory"):
            runner.train(compose("trainer.max_steps=2"), tmp_path)
    assert runner.train(compose("trainer.max_steps=2"), tmp_path)["steps"] == 2  # the lock is gone with its holder


def test_disk_full_during_a_checkpoint_stops_the_run_and_keeps_the_previous_one(compose, tmp_path, monkeypatch):
    real = os.fsync
    calls = {"n": 0}

    def full(fd):
        calls["n"] += 1
        if calls["n"] == 13:  # the third checkpoint's first file (six fsyncs per checkpoint)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(checkpoint.os, "fsync", full)
    with pytest.raises(RunError, match="cannot write the run directory .*No space left on device"):
        runner.train(compose("trainer.max_steps=40", "trainer.ckpt_every=10"), tmp_path)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "checkpoints")] == ["step_0000010", "step_0000020"]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    assert not (tmp_path / "summary.json").exists()


def test_an_unwritable_run_directory_is_a_clear_error(compose):
    with pytest.raises(RunError, match="cannot write the run directory /proc/runner-run"):
        runner.train(compose("trainer.max_steps=2"), "/proc/runner-run")


def _trained(compose, tmp_path):
    runner.train(compose("trainer.max_steps=2"), tmp_path)
    return checkpoint.latest_checkpoint(tmp_path)


def _replace(latest, name, data: bytes):
    (latest / name).write_bytes(data)
    manifest = json.loads((latest / "manifest.json").read_text())
    manifest[name] = checkpoint.file_sha256(latest / name)  # an attacker who also fixes the manifest
    (latest / "manifest.json").write_text(json.dumps(manifest))


def _safetensors(header: dict, payload: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + payload


@pytest.mark.parametrize(("name", "data"), [
    ("model.safetensors", struct.pack("<Q", 10**12) + b"{}"),  # header length beyond the file
    ("model.safetensors", struct.pack("<Q", 8) + b"not json"),  # damaged header
    ("model.safetensors", _safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12)),  # overlapping
    ("optimizer.safetensors", "a pickle that creates a marker file"),
])
def test_hostile_tensor_files_are_refused_and_run_nothing(compose, tmp_path, name, data):
    marker = tmp_path.parent / f"{tmp_path.name}-payload-ran"
    latest = _trained(compose, tmp_path)
    _replace(latest, name, pickle.dumps(Payload(str(marker))) if isinstance(data, str) else data)
    with pytest.raises(RunError, match="not a valid safetensors file|does not fit the model"):
        if name == "model.safetensors":
            runner.load(tmp_path)
        else:
            runner.resume(tmp_path)
    assert not marker.exists()


def test_a_saved_config_cannot_build_anything_outside_the_registry(compose, tmp_path):
    marker = tmp_path.parent / f"{tmp_path.name}-pwned"
    latest = _trained(compose, tmp_path)
    state = json.loads((latest / "state.json").read_text())
    state["config"]["model"]["layers"]["fc1"] = {"_target_": "os.system", "command": f"touch {marker}"}
    _replace(latest, "state.json", json.dumps(state).encode())
    with pytest.raises(ConfigError, match="model.layers.fc1.type: missing"):
        runner.load(tmp_path)
    state["config"]["model"]["layers"]["fc1"] = {"type": "os.system"}
    _replace(latest, "state.json", json.dumps(state).encode())
    with pytest.raises(ConfigError, match="unknown layer type 'os.system'"):
        runner.load(tmp_path)
    assert not marker.exists()


def test_a_damaged_checkpoint_is_named_on_resume(compose, tmp_path):
    latest = _trained(compose, tmp_path)
    (latest / "state.json").write_text("{}")
    with pytest.raises(RunError, match="state.json: SHA-256 does not match the manifest"):
        runner.resume(tmp_path)
