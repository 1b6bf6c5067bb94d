"""Guards for behaviours an audit could break without the rest of the suite noticing (issue 22):
ties transposed on dims other than the last two, the averaged model evaluated with the trained
model's BatchNorm statistics, early stopping resumed mid-streak, the seed written three ways in the
sweep report, and a continued sweep rerunning a job whose last attempt failed. Each expected value is
computed here, in plain PyTorch, arithmetic or safetensors' own reader."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import runner
from conftest import read_csv
from runner.api import sweep_job
from runner.errors import ConfigError
from runner.prepare.plan import validate
from runner.prepare.prepare import prepare
from runner.run.directory import RunDir, read_metrics
from runner.sweep.report import configurations, read_jobs, write_report


def _evals(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "eval"]


def _newest_checkpoint(run_dir: Path) -> Path:
    return max((run_dir / "checkpoints").iterdir(), key=lambda p: int(p.name.split("_")[1]))


def _averaged(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    """The averaged weights (trainer.ema_decay) a checkpoint stores, by tensor name, read with safetensors' own reader."""
    prefix = "ema."
    stored = load_file(checkpoint_dir / "optimizer.safetensors")
    return {name[len(prefix):]: tensor for name, tensor in stored.items() if name.startswith(prefix)}


# --- 1. Ties transposed on dims other than the last two ------------------------------------------

# A Conv2d and a ConvTranspose2d sharing one (3, 3, 3, 3) weight, the second reading it transposed on
# dims [0, 1] (the usual encoder/decoder tie); then two declared (3, 3, 3) tensors, b tied to a on
# dims [0, 2]. Every dim has size 3, so a tie that swapped the wrong dims would still fit the shapes:
# only the values tell.
TIED = (
    "model=custom",
    "data.name=synthetic", "data.task=regression", "data.num_samples=128", "data.num_features=27", "data.num_outputs=27",
    "+model.layers={image: {type: Unflatten, dim: 1, unflattened_size: [3, 3, 3]},"
    " conv: {type: Conv2d, in_channels: 3, out_channels: 3, kernel_size: 3, padding: 1, bias: false},"
    " deconv: {type: ConvTranspose2d, in_channels: 3, out_channels: 3, kernel_size: 3, padding: 1, bias: false},"
    " scaled: {type: Mul, inputs: [deconv, a]}, rescaled: {type: Mul, inputs: [scaled, b]}, flat: {type: Flatten}}",
    "+model.tensors={a: {shape: [3, 3, 3]}, b: {shape: [3, 3, 3]}}",
    "model.ties=[{target: deconv.weight, source: conv.weight, transpose: [0, 1]}, {target: b, source: a, transpose: [0, 2]}]",
    "init.rules=[{match: a, fn: normal_}]",
)


def _plain_tied(x: torch.Tensor, conv: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The TIED model in plain PyTorch, from its two stored tensors."""
    h = F.conv2d(x.reshape(-1, 3, 3, 3), conv, padding=1)
    h = F.conv_transpose2d(h, conv.transpose(0, 1), padding=1)
    return (h * a * a.transpose(0, 2)).flatten(1)


def _assert_tied_on_the_named_dims(model: torch.nn.Module, conv: torch.Tensor, a: torch.Tensor) -> None:
    """The model's stored tensors are `conv` and `a`, read by the targets with exactly the named dims swapped."""
    assert model.deconv.parametrizations.weight.original is model.conv.weight  # one stored tensor each
    assert model.parametrizations.b.original is model.a
    assert torch.equal(model.conv.weight, conv) and torch.equal(model.a, a)
    assert torch.equal(model.deconv.weight, conv.transpose(0, 1))
    assert torch.equal(model.b, a.transpose(0, 2))
    # Not another swap of the same shape, nor the stored layout.
    for other in ((2, 3), (1, 2), (0, 2)):
        assert not torch.equal(model.deconv.weight, conv.transpose(*other)), other
    for other in ((1, 2), (0, 1)):
        assert not torch.equal(model.b, a.transpose(*other)), other
    assert not torch.equal(model.deconv.weight, conv) and not torch.equal(model.b, a)


def test_a_tie_on_dims_0_1_of_a_conv_weight_and_0_2_of_a_declared_tensor_keeps_those_dims(compose, tmp_path):
    cfg = compose(*TIED)
    built = runner.build(cfg)
    assert [name for name, _ in built.named_parameters()] == ["a", "conv.weight"]
    conv, a = built.conv.weight.detach().clone(), built.a.detach().clone()
    _assert_tied_on_the_named_dims(built, conv, a)
    x = torch.randn(4, 27)
    torch.testing.assert_close(built(x), _plain_tied(x, conv, a), rtol=1e-6, atol=1e-6)

    runner.train(compose(*TIED, "trainer.max_steps=3", "trainer.ema_decay=0.5"), tmp_path)
    newest = _newest_checkpoint(tmp_path)
    stored = load_file(newest / "model.safetensors")  # one key per stored tensor: the targets are not saved
    assert sorted(stored) == ["a", "conv.weight"]
    assert not torch.equal(stored["conv.weight"], conv)  # training moved the weights: the load is not the build
    loaded = runner.load(tmp_path)
    _assert_tied_on_the_named_dims(loaded, stored["conv.weight"], stored["a"])

    averaged = _averaged(newest)
    assert sorted(averaged) == ["a", "conv.weight"] and not torch.equal(averaged["a"], stored["a"])
    ema = runner.load(tmp_path, ema=True)
    _assert_tied_on_the_named_dims(ema, averaged["conv.weight"], averaged["a"])

    # The averaged copy evaluated during training reads its ties the same way: the logged losses are
    # those of the plain model on the stored tensors.
    data = prepare(validate(cfg)).data
    last = _evals(tmp_path)[-1]
    with torch.no_grad():
        raw_loss = F.mse_loss(_plain_tied(data.val_x, stored["conv.weight"], stored["a"]), data.val_y).item()
        ema_loss = F.mse_loss(_plain_tied(data.val_x, averaged["conv.weight"], averaged["a"]), data.val_y).item()
    assert last["step"] == 3 and abs(raw_loss - ema_loss) > 1e-4
    assert last["val_loss"] == pytest.approx(raw_loss, rel=1e-5)
    assert last["val_loss_ema"] == pytest.approx(ema_loss, rel=1e-5)


# --- 2. The averaged model is evaluated with the trained model's buffers --------------------------

def _plain_cnn(x: torch.Tensor, weights: dict, buffers: dict) -> torch.Tensor:
    """conf/model/cnn.yaml in plain PyTorch, in eval mode: BatchNorm normalizes with `buffers`' running statistics."""
    h = x.reshape(-1, 1, 8, 8)
    for conv, bn in (("conv1", "bn1"), ("conv2", "bn2")):
        h = F.conv2d(h, weights[f"{conv}.weight"], weights[f"{conv}.bias"], padding=1)
        h = F.batch_norm(h, buffers[f"{bn}.running_mean"], buffers[f"{bn}.running_var"],
                         weights[f"{bn}.weight"], weights[f"{bn}.bias"], training=False, eps=1e-5)
        h = F.relu(h)
    h = F.adaptive_avg_pool2d(h, 2).flatten(1)
    return F.linear(h, weights["head.weight"], weights["head.bias"])


def test_the_average_is_evaluated_with_the_trained_models_batchnorm_statistics(compose, tmp_path):
    overrides = ("model=cnn", "trainer.max_steps=8", "trainer.ema_decay=0.9")
    cfg = compose(*overrides)
    initial = {k: v.clone() for k, v in runner.build(cfg).state_dict().items()}  # what the averaged copy started as
    runner.train(cfg, tmp_path)
    newest = _newest_checkpoint(tmp_path)
    trained = load_file(newest / "model.safetensors")
    averaged = _averaged(newest)
    assert sorted(averaged) == sorted(k for k in trained if "running" not in k and "num_batches" not in k)
    running = {k: v for k, v in trained.items() if "running" in k}
    assert all(not torch.equal(v, initial[k]) for k, v in running.items())  # training moved the statistics

    data = prepare(validate(cfg)).data
    with torch.no_grad():
        expected = F.cross_entropy(_plain_cnn(data.val_x, averaged, trained), data.val_y).item()
        stale = F.cross_entropy(_plain_cnn(data.val_x, averaged, initial), data.val_y).item()  # the copy's own buffers
        raw = F.cross_entropy(_plain_cnn(data.val_x, trained, trained), data.val_y).item()
    (last,) = _evals(tmp_path)
    assert last["step"] == 8 and abs(expected - stale) > 1e-3 and abs(expected - raw) > 1e-4
    assert last["val_loss"] == pytest.approx(raw, rel=1e-5)
    assert last["val_loss_ema"] == pytest.approx(expected, rel=1e-5)
    # runner.load(ema=True) computes the same: averaged weights, the trained model's buffers.
    with torch.no_grad():
        loaded = F.cross_entropy(runner.load(tmp_path, ema=True)(data.val_x), data.val_y).item()
    assert loaded == pytest.approx(expected, rel=1e-5)


# --- 3. Early stopping resumed in the middle of a streak ------------------------------------------

PATIENCE = 3
# 160 training rows in batches of 64: 3 steps an epoch, an evaluation and a checkpoint after each.
STOPPING = ("data=synthetic", "data.num_samples=200", "optim.lr=0.03", "trainer.epochs=40", "trainer.ckpt_every=3",
            "trainer.keep_last=100", f"trainer.early_stopping={{metric: val_loss, patience: {PATIENCE}}}")


def _bad_counts(evals: list[dict]) -> list[int]:
    """The number of evaluations since the best val_loss, after each evaluation (min_delta 0)."""
    best, bad, counts = float("inf"), 0, []
    for record in evals:
        best, bad = (record["val_loss"], 0) if record["val_loss"] < best else (best, bad + 1)
        counts.append(bad)
    return counts


@pytest.mark.parametrize("streak", [1, PATIENCE - 1])
def test_early_stopping_resumed_mid_streak_stops_where_the_uninterrupted_run_does(compose, tmp_path, streak):
    full = runner.train(compose(*STOPPING), tmp_path / "full")
    evals = _evals(tmp_path / "full")
    counts = _bad_counts(evals)
    assert counts[-1] == PATIENCE and PATIENCE not in counts[:-1]  # the rule stopped it, at its last evaluation
    assert full["stopped_early"] is not None and full["steps"] == evals[-1]["step"] < 40 * 3
    # The last evaluation before the stop whose streak is `streak` long: the crash comes right after it.
    cut = max(i for i, n in enumerate(counts[:-1]) if n == streak)
    cut_step = evals[cut]["step"]
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    for saved in (tmp_path / "cut" / "checkpoints").iterdir():
        if int(saved.name.split("_")[1]) > cut_step:
            shutil.rmtree(saved)
    (tmp_path / "cut" / "summary.json").unlink()
    assert _newest_checkpoint(tmp_path / "cut").name == f"step_{cut_step:07d}"

    resumed = runner.resume(tmp_path / "cut")
    assert _evals(tmp_path / "cut") == evals  # the same evaluations, none more
    for key in ("steps", "stopped_early", "best", "weights_sha256"):
        assert resumed[key] == full[key], key


# --- 4. seed=, ++seed= and ~seed group as one configuration ---------------------------------------

def _fake_job(sweep: Path, number: int, overrides: list[str], seed: int, val_loss: float) -> None:
    """A finished job directory as Hydra and the runner leave it."""
    job = sweep / str(number)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (job / "summary.json").write_text(json.dumps({"val_loss": val_loss, "val_accuracy": 1 - val_loss, "train_loss": val_loss / 2, "seed": seed}))
    (job / "job.json").write_text(json.dumps({"status": "ok", "how": "trained"}))


# What Hydra writes into a job's .hydra/overrides.yaml for each way of giving the seed: a multirun
# records `~seed` as `~seed=null`.
WAYS = {"default": [], "seed=": ["seed=1"], "++seed=": ["++seed=2"], "+seed=": ["+seed=3"], "~seed": ["~seed=null"]}


def _seed_sweep(sweep: Path, ways: list[list[str]]) -> dict[str, list[float]]:
    """Fake finished jobs: for each init, one job per way of writing the seed; returns init -> val_loss per job."""
    losses = {"xavier": [0.50, 0.52, 0.47, 0.55, 0.51], "normal": [0.90, 0.80, 0.85, 0.95, 0.70]}
    number = 0
    for init, values in losses.items():
        for seed, (way, loss) in enumerate(zip(ways, values)):
            _fake_job(sweep, number, [f"init={init}", *way, "trainer.max_steps=12"], seed, loss)
            number += 1
    # A split seed is not the run's seed: that job is a configuration of its own.
    _fake_job(sweep, number, ["init=xavier", "data.split_seed=1", "trainer.max_steps=12"], 0, 0.6)
    return losses


def _assert_grouped_by_init(sweep: Path, losses: dict[str, list[float]]) -> None:
    assert [len(g.jobs) for g in configurations(read_jobs(sweep))] == [5, 5, 1]
    write_report(sweep)
    rows = read_csv(sweep / "report_groups.csv")
    assert [r["configuration"] for r in rows] == ["init=xavier", "init=normal", "init=xavier data.split_seed=1"]
    assert [r["n"] for r in rows] == ["5", "5", "1"] and [r["seeds"] for r in rows[:2]] == ["0 1 2 3 4"] * 2
    for row, values in zip(rows, losses.values()):
        assert float(row["val_loss_mean"]) == pytest.approx(statistics.fmean(values), rel=1e-12)
        assert float(row["val_loss_std"]) == pytest.approx(float(np.std(values, ddof=1)), rel=1e-9)


def test_seed_overrides_written_any_way_group_as_one_configuration(tmp_path):
    _assert_grouped_by_init(tmp_path, _seed_sweep(tmp_path, list(WAYS.values())))


def test_a_bare_tilde_seed_groups_with_the_others_too(tmp_path):
    _assert_grouped_by_init(tmp_path, _seed_sweep(tmp_path, [*list(WAYS.values())[:4], ["~seed"]]))


# --- 5. A continued sweep reruns a job whose last attempt failed, config unchanged ----------------

def test_a_job_that_failed_after_an_earlier_success_is_rerun_with_the_same_config(compose, tmp_path):
    data_file = tmp_path / "data.npz"
    rng = np.random.default_rng(0)
    features = rng.normal(size=(120, 4)).astype(np.float32)
    np.savez(data_file, features=features, targets=(features[:, 0] > 0).astype(np.int64))
    cfg = compose("data=file", f"data.path={data_file}", "data.num_features=4", "data.num_outputs=2", "trainer.max_steps=3")
    job = tmp_path / "0"
    files = RunDir(job)

    first, how = sweep_job(cfg, job)
    assert how == "trained"
    # The next run of the sweep fails with the very same config: the data file is away for a moment.
    # The job's directory keeps the finished run, with the failure recorded beside it as the CLI records it.
    moved = data_file.rename(tmp_path / "elsewhere.npz")
    with pytest.raises(ConfigError) as failure:
        sweep_job(cfg, job)
    files.error.write_text(json.dumps({"error": str(failure.value)}), encoding="utf-8")
    files.job.write_text(json.dumps({"status": "failed", "how": "failed", "error": str(failure.value)}), encoding="utf-8")
    moved.rename(data_file)
    assert files.summary.is_file() and files.config.is_file()  # the earlier success is still there
    earlier_summary = files.summary.read_text()

    again, how = sweep_job(cfg, job)
    assert how == "rerun"  # not "reused": the last attempt of this job failed
    assert not files.error.exists()  # the failure's record is cleared with the old outputs
    assert files.summary.read_text() != earlier_summary  # written anew (its wall time differs)
    assert again["weights_sha256"] == first["weights_sha256"] and again["steps"] == 3
