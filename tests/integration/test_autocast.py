"""trainer.autocast: bfloat16 and float16 steps against plain PyTorch loops, skipped float16 steps, resume, bad input.

float16 is refused on a CPU (a config error, tested below); its loop runs here through
`run_training`, which takes a validated plan without the machine checks, so the GradScaler
path is proven on the CPU with torch.amp.GradScaler("cpu").
"""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

import runner
from runner.errors import ConfigError
from runner.prepare.plan import validate
from runner.prepare.prepare import prepare
from runner.run import checkpoint
from runner.run.directory import read_metrics
from runner.training.run import run_training

SEED_STRIDE = 100_003  # the data order: randperm(n, Generator().manual_seed(seed * 100_003 + epoch))
# N(0, 3^2) weights: the logits are large, so float16 gradients overflow at GradScaler's first scales.
LOUD = ("init=normal", "init.rules.0.std=3.0")


def _plain_loop(compose, steps: int, dtype: torch.dtype, *overrides: str):
    """Trains the run's initial model with a hand-written Adam loop; returns (model, steps skipped)."""
    prepared = prepare(validate(compose(*overrides)))
    model, data = prepared.model, prepared.data
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)  # optim=adam's settings
    scaler = torch.amp.GradScaler("cpu") if dtype == torch.float16 else None
    order = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(0 * SEED_STRIDE + 0))
    skipped = 0
    for step in range(steps):
        rows = order[step * 64 : (step + 1) * 64]
        x, y = data.train_x[rows], data.train_y[rows]
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype):
            loss = F.cross_entropy(model(x), y)
        before = [p.detach().clone() for p in model.parameters()]
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            skipped += all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    return model, skipped


def test_bfloat16_steps_equal_a_plain_autocast_loop(compose, tmp_path):
    summary = runner.train(compose("trainer.autocast=bfloat16", "trainer.max_steps=8"), tmp_path / "bf16")
    plain, _ = _plain_loop(compose, 8, torch.bfloat16)
    trained = runner.load(tmp_path / "bf16")
    for (name, ours), theirs in zip(trained.state_dict().items(), plain.state_dict().values()):
        assert ours.dtype == torch.float32, name  # the weights stay in trainer.dtype
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0, msg=name)
    # The model is evaluated as it trains: under autocast.
    data = prepare(validate(compose())).data
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        val_loss = F.cross_entropy(trained(data.val_x), data.val_y).item()
    assert summary["val_loss"] == pytest.approx(val_loss, rel=1e-6)
    assert summary["autocast"] == "bfloat16" and summary["skipped_steps"] is None
    # Autocast changed the arithmetic: a float32 run ends elsewhere.
    full = runner.train(compose("trainer.max_steps=8"), tmp_path / "fp32")
    assert full["weights_sha256"] != summary["weights_sha256"]


def test_float16_steps_with_overflow_equal_a_plain_grad_scaler_loop(compose, tmp_path):
    cfg = compose(*LOUD, "trainer.autocast=float16", "trainer.max_steps=12", "trainer.log_every=1")
    summary = run_training(prepare(validate(cfg)), tmp_path)
    plain, skipped = _plain_loop(compose, 12, torch.float16, *LOUD)
    for (name, ours), theirs in zip(runner.load(tmp_path).state_dict().items(), plain.state_dict().values()):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0, msg=name)
    assert skipped >= 2 and summary["skipped_steps"] == skipped
    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    flagged = [r["step"] for r in records if r.get("step_skipped")]
    assert len(flagged) == skipped and records[-1]["skipped_steps"] == skipped
    # No growth within 2000 steps: each skipped step halved GradScaler's initial 2^16.
    assert records[-1]["grad_scale"] == 65536.0 / 2**skipped
    # A skipped step is not a non-finite loss, and its overflowed gradients are not reported as statistics.
    assert all("grad_norm" not in r for r in records if r.get("step_skipped"))
    assert all(r["grad_norm"] > 0 for r in records if not r.get("step_skipped"))


def test_plots_and_histograms_take_logged_steps_that_were_skipped(compose, tmp_path):
    cfg = compose(*LOUD, "trainer.autocast=float16", "trainer.max_steps=12", "trainer.log_every=1", "trainer.hist_every=1",
                  "trainer.plots=true", "trainer.tensorboard=true")
    summary = run_training(prepare(validate(cfg)), tmp_path)
    assert 2 <= summary["skipped_steps"] < 12  # logged steps of both kinds
    assert (tmp_path / "grad_norms.png").read_bytes()[:4] == b"\x89PNG"


def test_a_skipped_float16_step_does_not_advance_the_schedule(compose, tmp_path):
    cfg = compose(*LOUD, "optim=sgd", "optim.lr=0.001", "optim.scheduler.name=cosine", "trainer.autocast=float16",
                  "trainer.max_steps=10", "trainer.log_every=1")
    run_training(prepare(validate(cfg)), tmp_path)
    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    applied = 0
    for record in records:  # the lr logged after step t follows the cosine through the steps applied so far
        applied += not record.get("step_skipped", False)
        assert record["lr"] == pytest.approx(0.0005 * (1 + torch.cos(torch.tensor(torch.pi * applied / 10)).item()), abs=1e-9), record["step"]
    assert applied < 10


@pytest.mark.parametrize("autocast", ["bfloat16", "float16"])
def test_a_resumed_autocast_run_is_bit_identical(compose, tmp_path, autocast):
    cfg = compose(*LOUD, f"trainer.autocast={autocast}", "trainer.epochs=2", "trainer.ckpt_every=3", "trainer.keep_last=30", "trainer.log_every=1")
    full = run_training(prepare(validate(cfg)), tmp_path / "full")
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    for late in checkpoint.list_checkpoints(tmp_path / "cut" / "checkpoints")[2:]:  # resume from step 6, among the skips
        shutil.rmtree(late)
    resumed = run_training(prepare(validate(cfg)), tmp_path / "cut", resume_from=checkpoint.latest_checkpoint(tmp_path / "cut"))
    assert resumed["weights_sha256"] == full["weights_sha256"] and resumed["skipped_steps"] == full["skipped_steps"]
    assert read_metrics(tmp_path / "cut" / "metrics.jsonl") == read_metrics(tmp_path / "full" / "metrics.jsonl")


def test_float16_on_a_cpu_is_a_config_error(compose, tmp_path):
    with pytest.raises(ConfigError) as raised:
        runner.train(compose("trainer.autocast=float16", "trainer.device=cpu"), tmp_path / "run")
    assert "trainer.autocast: float16 autocast needs a CUDA device (trainer.device is cpu); use trainer.autocast=bfloat16" in str(raised.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides, message", [
    (("trainer.autocast=float8",), "trainer.autocast: expected null, bfloat16 or float16, got 'float8'"),
    (("trainer.autocast=bfloat16", "trainer.dtype=float64"), "trainer.autocast: autocast computes in bfloat16 from float32 weights; trainer.dtype is float64"),
])
def test_bad_autocast_settings_are_named(compose, overrides, message):
    with pytest.raises(ConfigError) as raised:
        validate(compose(*overrides))
    assert message in str(raised.value)
