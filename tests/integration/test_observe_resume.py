"""Gradient statistics, optimizer groups, non-finite stops, checkpoints, exact resume, runner.load."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch
import torch.nn.functional as F

import runner
from conftest import NaNBatchesAt, Payload, run_cli
from runner.data.loader import Batches
from runner.errors import ConfigError, RunError
from runner.prepare.optim import make_optimizer
from runner.prepare.plan import validate
from runner.prepare.prepare import prepare
from runner.run import checkpoint
from runner.run.directory import read_metrics


def test_grad_stats_equal_an_independent_autograd_computation_tied_case(compose, tmp_path):
    cfg = compose("model=tied_mlp", "optim=sgd", "optim.momentum=0", "optim.lr=0.1", "trainer.max_steps=1", "trainer.log_every=1")
    runner.train(cfg, tmp_path)
    record = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"][0]
    # Independently: same initial weights, the same first batch, plain autograd.
    prepared = prepare(validate(cfg))
    model, data = prepared.model, prepared.data
    x, y = next(Batches(data.train_x, data.train_y, 64, 0).epoch(0))
    weights = dict(model.named_parameters())
    grads = dict(zip(weights, torch.autograd.grad(F.cross_entropy(model(x), y), list(weights.values()))))
    for name in ("shared.weight", "fc_in.weight", "head.bias"):
        g, w = grads[name], weights[name].detach()
        assert record[f"grad_norm/{name}"] == pytest.approx(g.norm().item(), rel=1e-5)
        assert record[f"grad_max/{name}"] == pytest.approx(g.abs().max().item(), rel=1e-5)
        assert record[f"weight_norm/{name}"] == pytest.approx((w - 0.1 * g).norm().item(), rel=1e-5)
        assert record[f"update_ratio/{name}"] == pytest.approx((0.1 * g).norm().item() / w.norm().item(), rel=1e-4)
    assert "grad_norm/shared_again.weight" not in record  # a tied tensor is logged once...
    aliases = read_metrics(tmp_path / "metrics.jsonl")[0]
    assert aliases == {"kind": "aliases", "step": 0, "aliases": {"shared.weight": ["shared_again.weight"], "shared.bias": ["shared_again.bias"]}}
    total = torch.sqrt(sum(g.norm() ** 2 for g in grads.values())).item()
    assert record["grad_norm"] == pytest.approx(total, rel=1e-5)


@pytest.mark.parametrize("log_every", [1, 7, 25])
def test_metrics_keys_and_counts_per_log_interval(compose, tmp_path, log_every):
    runner.train(compose("trainer.max_steps=50", f"trainer.log_every={log_every}"), tmp_path)
    train = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in train] == sorted({1, *range(log_every, 51, log_every)})  # step 1 always: the initial weights
    names = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "head.weight", "head.bias"]
    expected = {"kind", "step", "epoch", "loss", "lr", "grad_norm"} | {f"{s}/{n}" for s in ("grad_norm", "grad_max", "weight_norm", "update_ratio") for n in names}
    expected |= {f"act_{s}/{layer}" for s in ("mean", "std") for layer in ("fc1", "act1", "fc2", "act2", "head")}
    assert all(set(r) == expected for r in train)


def test_interrupted_then_resumed_run_is_bit_identical(compose, tmp_path):
    overrides = ["trainer.epochs=3", "trainer.ckpt_every=17", "trainer.keep_last=10", "optim=sgd_cosine", "optim.scheduler.warmup_steps=10"]
    full = runner.train(compose(*overrides), tmp_path / "full")
    # The crash: the directory as it stood after the step-34 checkpoint (mid-epoch: 23 batches per epoch).
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    for late in ("step_0000051", "step_0000068", "step_0000069"):
        shutil.rmtree(tmp_path / "cut" / "checkpoints" / late)
    (tmp_path / "cut" / "summary.json").unlink()
    resumed = runner.resume(tmp_path / "cut")
    assert resumed["weights_sha256"] == full["weights_sha256"]
    assert resumed["val_loss"] == full["val_loss"] and resumed["train_loss"] == full["train_loss"]
    assert read_metrics(tmp_path / "cut" / "metrics.jsonl") == read_metrics(tmp_path / "full" / "metrics.jsonl")


def test_cli_resume_continues_in_the_run_directory(tmp_path):
    first = run_cli("trainer.max_steps=20", "trainer.ckpt_every=10", "trainer.progress=off", f"hydra.run.dir={tmp_path / 'a'}")
    assert first.returncode == 0, first.stderr
    shutil.rmtree(tmp_path / "a" / "checkpoints" / "step_0000020")
    again = run_cli(f"resume={tmp_path / 'a'}", "trainer.max_steps=30", "trainer.progress=off", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["steps"] == 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # a resume writes nowhere else


def test_runner_load_restores_ties_buffers_and_leaves_non_persistent_ones_out(compose, tmp_path):
    runner.train(compose("experiment=transformer_lm", "trainer.max_steps=3"), tmp_path / "lm")
    model = runner.load(tmp_path / "lm")
    assert model.head.weight is model.embed.weight
    assert torch.count_nonzero(model.position.encoding) > 0  # rebuilt, not loaded
    from safetensors.torch import load_file  # the library's own reader, not ours

    saved = load_file(checkpoint.latest_checkpoint(tmp_path / "lm") / "model.safetensors")
    assert torch.equal(saved["embed.weight"], model.embed.weight)
    summary = runner.train(compose("model=frozen_features", "trainer.max_steps=3"), tmp_path / "ff")
    loaded = runner.load(tmp_path / "ff")
    from runner.run.directory import weights_sha256

    assert weights_sha256(loaded) == summary["weights_sha256"]
    assert torch.count_nonzero(loaded.norm.mean) > 0 and not loaded.training


def test_a_pickle_in_place_of_a_checkpoint_file_is_refused_and_never_runs(compose, tmp_path):
    runner.train(compose("trainer.max_steps=2"), tmp_path)
    latest = checkpoint.latest_checkpoint(tmp_path)
    marker = tmp_path / "PAYLOAD_RAN"
    (latest / "model.safetensors").write_bytes(pickle.dumps(Payload(str(marker))))
    with pytest.raises(RunError, match="SHA-256 does not match"):
        runner.load(tmp_path)
    # An attacker who also rewrites the manifest still gets nothing run: safetensors refuses the file.
    manifest = json.loads((latest / "manifest.json").read_text())
    manifest["model.safetensors"] = checkpoint.file_sha256(latest / "model.safetensors")
    (latest / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RunError, match="not a valid safetensors file"):
        runner.load(tmp_path)
    assert not marker.exists()


def test_nan_at_step_k_stops_there_with_the_previous_checkpoint_intact(compose, tmp_path):
    with pytest.raises(RunError, match=r"^step 10: the training loss is nan"):
        runner.train(compose("trainer.max_steps=40", "trainer.ckpt_every=4", "trainer.log_every=5"), tmp_path, callbacks=[NaNBatchesAt(10)])
    latest = checkpoint.latest_checkpoint(tmp_path)
    assert latest.name == "step_0000008"
    checkpoint.verify(latest)
    model = runner.load(tmp_path)
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())


def test_param_groups_give_each_tensor_its_own_settings(compose):
    cfg = compose("optim=sgd")
    cfg.optim.param_groups = [{"match": "head.*", "lr": 0.5}, {"weight_decay": 0.1}]
    prepared = prepare(validate(cfg))
    groups = make_optimizer(prepared.model, prepared.spec.optim, prepared.plan.groups).param_groups
    assert [(g["names"], g["lr"], g["weight_decay"]) for g in groups] == [
        (["head.weight", "head.bias"], 0.5, 0.0),
        (["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"], 0.05, 0.1),
    ]


@pytest.mark.parametrize(("groups", "text"), [
    ([{"match": "head.*"}, {"match": "*.bias"}], "'head.bias' is in groups group0, group1"),
    ([{"match": "head.*"}], "'fc1.weight' is in no group"),
    ([{"match": "nothing.*"}, {}], "matches no trainable tensor"),
])
def test_param_group_overlap_gap_and_typo_are_config_errors(compose, groups, text):
    cfg = compose()
    cfg.optim.param_groups = groups
    with pytest.raises(ConfigError, match=text.replace("[", r"\[").replace("]", r"\]")):
        validate(cfg)


def test_no_decay_option_exempts_biases_and_norm_weights(compose):
    cfg = compose("model=cnn", "optim=adamw_no_decay")
    prepared = prepare(validate(cfg))
    groups = make_optimizer(prepared.model, prepared.spec.optim, prepared.plan.groups).param_groups
    decayed = {n for g in groups if g["weight_decay"] > 0 for n in g["names"]}
    exempt = {n for g in groups if g["weight_decay"] == 0 for n in g["names"]}
    assert decayed == {"conv1.weight", "conv2.weight", "head.weight"}
    assert {"conv1.bias", "bn1.weight", "bn1.bias", "head.bias"} <= exempt


def test_warmup_cosine_schedule_and_clipping(compose, tmp_path):
    overrides = ["optim=sgd_cosine", "optim.momentum=0", "optim.weight_decay=0", "optim.clip_grad_norm=0.001"]
    runner.train(compose(*overrides, "trainer.max_steps=100", "trainer.log_every=1"), tmp_path)
    train = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    lrs = [r["lr"] for r in train]  # the lr after each step's scheduler.step()
    assert lrs[0] < lrs[48] and lrs[49] == pytest.approx(0.1, rel=0.02) and lrs[-1] < 0.01
    names = [k.split("/", 1)[1] for k in train[0] if k.startswith("update_ratio/")]
    assert max(r["grad_norm"] for r in train) > 0.01  # raw gradients are far above the clip...
    measurable = [(b, a, lr) for b, a, lr in zip(train, train[1:], lrs) if lr >= 0.01]
    assert len(measurable) > 50
    for before, after, lr in measurable:
        # ...yet plain SGD moves the weights by lr * clipped gradient: global norm <= lr * 0.001.
        update = sum((after[f"update_ratio/{n}"] * before[f"weight_norm/{n}"]) ** 2 for n in names) ** 0.5
        assert update <= lr * 0.001 * 1.01  # 1%: float32 cancellation in w_after - w_before at 1e-6 scale


def test_tensorboard_events_and_plots_are_written(compose, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runner.train(compose("trainer.max_steps=20", "trainer.log_every=10", "trainer.tensorboard=true", "trainer.plots=true", "trainer.hist_every=10"), tmp_path)
    events = EventAccumulator(str(tmp_path)).Reload()
    scalars, histograms = set(events.Tags()["scalars"]), set(events.Tags()["histograms"])
    assert {"train/loss", "train/grad_norm", "grad_norm/fc1.weight", "eval/val_loss"} <= scalars
    assert {"weights/fc1.weight", "grads/fc1.weight"} <= histograms
    assert [e.step for e in events.Scalars("train/loss")] == [1, 10, 20]
    for name in ("loss.png", "grad_norms.png", "activations.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_environment_records_versions_and_the_rerun_command(compose, tmp_path):
    runner.train(compose("trainer.max_steps=1"), tmp_path)
    env = json.loads((tmp_path / "environment.json").read_text())
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"
    assert {"python", "hydra", "omegaconf", "platform", "git_commit"} <= set(env)
    assert env["command"].endswith(f"--config-path {tmp_path.resolve()} --config-name config")


def test_statistics_off_log_loss_and_lr_only(compose, tmp_path):
    runner.train(compose("trainer.max_steps=20", "trainer.log_every=10", "trainer.grad_stats=false", "trainer.activation_stats=false"), tmp_path)
    train = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert [set(r) for r in train] == [{"kind", "step", "epoch", "loss", "lr"}] * 3  # steps 1, 10, 20


@pytest.mark.slow
def test_compiled_training_matches_eager(compose, tmp_path):
    eager = runner.train(compose("trainer.max_steps=10", "trainer.log_every=4"), tmp_path / "eager")
    compiled = runner.train(compose("trainer.max_steps=10", "trainer.log_every=4", "trainer.compile=true"), tmp_path / "compiled")
    assert compiled["steps"] == 10
    # Logged steps run the forward pass eagerly, so the hooks see it: activation statistics on every logged step.
    records = [r for r in read_metrics(tmp_path / "compiled" / "metrics.jsonl") if r["kind"] == "train"]
    reference = [r for r in read_metrics(tmp_path / "eager" / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in records] == [1, 4, 8]
    for ours, theirs in zip(records, reference):
        assert ours["act_std/fc1"] == pytest.approx(theirs["act_std/fc1"], rel=1e-4)
    a, b = runner.load(tmp_path / "eager"), runner.load(tmp_path / "compiled")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=name)
    assert compiled["val_loss"] == pytest.approx(eager["val_loss"], rel=1e-3)


def test_resume_refuses_settings_that_end_before_the_steps_already_trained(compose, tmp_path):
    runner.train(compose("trainer.epochs=2"), tmp_path)  # digits: 1437 training rows, 23 batches of 64 an epoch
    saved = (tmp_path / "config.yaml").read_bytes()
    with pytest.raises(runner.ConfigError, match=r"trainer.epochs: the run has trained 46 steps \(2 epochs of 23\); trainer.epochs=1 would end"):
        runner.resume(tmp_path, ["trainer.epochs=1"])
    with pytest.raises(runner.ConfigError, match=r"trainer.max_steps: the run has trained 46 steps; trainer.max_steps=45 would end"):
        runner.resume(tmp_path, ["trainer.max_steps=45"])
    result = run_cli(f"resume={tmp_path}", "trainer.epochs=1")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "trainer.epochs: the run has trained 46 steps" in result.stderr
    assert (tmp_path / "config.yaml").read_bytes() == saved  # never rewritten to describe a shorter run
    assert runner.resume(tmp_path, ["trainer.max_steps=46"])["steps"] == 46  # as far as it went: accepted, nothing to train
