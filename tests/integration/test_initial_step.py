"""Step 1 is always logged: its gradient and activation statistics describe the initial weights, and the
sweep report's "at step 1 (initial weights)" views read that record."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
import yaml

import runner
from conftest import read_csv
from runner.prepare.plan import validate
from runner.prepare.prepare import prepare
from runner.run import checkpoint
from runner.run.directory import read_metrics
from runner.sweep.report import Job, read_jobs, write_report
from runner.training.run import run_training

SEED_STRIDE = 100_003  # the documented data order: randperm(n, Generator().manual_seed(seed * 100_003 + epoch))
# N(0, 3^2) weights: the logits are large, so float16 gradients overflow at GradScaler's first scales.
LOUD = ("init=normal", "init.rules.0.std=3.0")


def _train_records(run_dir) -> list[dict]:
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"]


def _initial_step_by_hand(cfg, rows: int, layers: list[str]) -> tuple[float, dict[str, float], dict[str, torch.Tensor], dict[str, float]]:
    """Returns (loss, act_std per layer, gradient per tensor, act_mean per layer) of the first `rows` rows of
    epoch 0 on a freshly built copy of the initial model: plain PyTorch, not the runner's loop or hooks."""
    model = runner.build(cfg)
    data = prepare(validate(cfg)).data
    order = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(cfg.seed * SEED_STRIDE))[:rows]
    x, y = data.train_x[order], data.train_y[order]
    outputs: dict[str, torch.Tensor] = {}
    handles = [model.get_submodule(name).register_forward_hook(lambda m, a, out, name=name: outputs.__setitem__(name, out.detach()))
               for name in layers]
    loss = F.cross_entropy(model(x), y)
    for handle in handles:
        handle.remove()
    weights = dict(model.named_parameters())
    grads = dict(zip(weights, torch.autograd.grad(loss, list(weights.values()))))
    stds = {name: out.std(unbiased=False).item() for name, out in outputs.items()}
    means = {name: out.mean().item() for name, out in outputs.items()}
    return loss.item(), stds, grads, means


def test_step_1_is_logged_with_the_statistics_of_the_initial_weights(compose, tmp_path):
    # The issue's case: N(0, 0.01^2) weights on the nested model. Before, the first record was step 10's,
    # after 9 updates: blocks.3's std there is ~0.003, while the initial weights give ~1e-12.
    cfg = compose("model=nested", "init=normal", "trainer.max_steps=25", "trainer.log_every=10", "trainer.threads=1")
    runner.train(cfg, tmp_path)
    train = _train_records(tmp_path)
    assert [r["step"] for r in train] == [1, 10, 20]
    first = train[0]
    layers = ["stem", "blocks.0.fc1", "blocks.3.fc2", "head"]
    loss, stds, grads, means = _initial_step_by_hand(cfg, cfg.trainer.batch_size, layers)
    assert first["loss"] == pytest.approx(loss, rel=1e-6)
    for name in layers:
        assert first[f"act_std/{name}"] == pytest.approx(stds[name], rel=1e-4), name
        assert first[f"act_mean/{name}"] == pytest.approx(means[name], rel=1e-4, abs=1e-12), name
    for name in ("stem.weight", "blocks.0.fc1.weight", "blocks.3.fc2.bias", "head.weight"):
        assert first[f"grad_norm/{name}"] == pytest.approx(grads[name].norm().item(), rel=1e-4), name
        assert first[f"grad_max/{name}"] == pytest.approx(grads[name].abs().max().item(), rel=1e-4), name
    total = torch.sqrt(sum(g.norm() ** 2 for g in grads.values())).item()
    assert first["grad_norm"] == pytest.approx(total, rel=1e-4)
    # Vanishing at init, not after training: the step-10 record is orders of magnitude away.
    assert stds["blocks.3.fc2"] < 1e-6 < train[1]["act_std/blocks.3.fc2"]


def test_an_accumulated_step_1_covers_every_batch_of_the_step_on_the_initial_weights(compose, tmp_path):
    cfg = compose("trainer.batch_size=16", "trainer.accumulate_grad_batches=4", "trainer.max_steps=12", "trainer.log_every=5")
    runner.train(cfg, tmp_path)
    train = _train_records(tmp_path)
    assert [r["step"] for r in train] == [1, 5, 10]  # optimizer steps, each over 4 batches
    loss, stds, grads, _ = _initial_step_by_hand(cfg, 64, ["fc1", "head"])  # step 1's 4 x 16 rows, before any update
    assert train[0]["loss"] == pytest.approx(loss, rel=1e-5)
    assert train[0]["act_std/fc1"] == pytest.approx(stds["fc1"], rel=1e-4)
    assert train[0]["act_std/head"] == pytest.approx(stds["head"], rel=1e-4)
    assert train[0]["grad_norm/fc1.weight"] == pytest.approx(grads["fc1.weight"].norm().item(), rel=1e-4)


def test_a_resumed_run_logs_step_1_once_and_equals_the_uninterrupted_one(compose, tmp_path):
    cfg = compose("trainer.max_steps=30", "trainer.log_every=10", "trainer.ckpt_every=5", "trainer.keep_last=10")
    full = runner.train(cfg, tmp_path / "full")
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    for late in checkpoint.list_checkpoints(tmp_path / "cut" / "checkpoints")[1:]:  # resume from step 5
        shutil.rmtree(late)
    (tmp_path / "cut" / "summary.json").unlink()
    resumed = runner.resume(tmp_path / "cut")
    assert resumed["weights_sha256"] == full["weights_sha256"]
    assert read_metrics(tmp_path / "cut" / "metrics.jsonl") == read_metrics(tmp_path / "full" / "metrics.jsonl")
    assert [r["step"] for r in _train_records(tmp_path / "cut")] == [1, 10, 20, 30]


def test_float16_logs_each_step_on_the_initial_weights_up_to_the_first_applied_one(compose, tmp_path):
    # run_training takes the plan without the machine checks, so GradScaler runs on the CPU (as in test_autocast).
    sparse = run_training(prepare(validate(compose(*LOUD, "trainer.autocast=float16", "trainer.max_steps=12", "trainer.log_every=100"))), tmp_path / "sparse")
    run_training(prepare(validate(compose(*LOUD, "trainer.autocast=float16", "trainer.max_steps=12", "trainer.log_every=1"))), tmp_path / "every")
    every, records = _train_records(tmp_path / "every"), _train_records(tmp_path / "sparse")
    applied = next(r["step"] for r in every if not r.get("step_skipped"))
    assert applied >= 2  # step 1 overflowed: the weights were still the initial ones at the next step
    assert [r["step"] for r in records] == list(range(1, applied + 1))
    assert [r.get("step_skipped", False) for r in records] == [True] * (applied - 1) + [False]
    assert records == every[:applied]  # logging more steps changed nothing
    assert sparse["skipped_steps"] >= applied - 1
    # The report's initial-weights record: the first applied step, with its gradient statistics.
    job = Job(tmp_path / "sparse", [], "ok", train=records)
    assert job.initial["step"] == applied and job.initial["grad_norm"] == records[-1]["grad_norm"] > 0
    assert Job(tmp_path / "every", [], "ok", train=every).initial is every[applied - 1]


def test_a_float16_run_resumed_among_the_first_skips_logs_the_same_steps(compose, tmp_path):
    cfg = compose(*LOUD, "trainer.autocast=float16", "trainer.max_steps=12", "trainer.log_every=100", "trainer.ckpt_every=1", "trainer.keep_last=30")
    full = run_training(prepare(validate(cfg)), tmp_path / "full")
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    for late in checkpoint.list_checkpoints(tmp_path / "cut" / "checkpoints")[1:]:  # resume from step 1, skipped
        shutil.rmtree(late)
    assert checkpoint.latest_checkpoint(tmp_path / "cut").name == "step_0000001"
    resumed = run_training(prepare(validate(cfg)), tmp_path / "cut", resume_from=checkpoint.latest_checkpoint(tmp_path / "cut"))
    assert resumed["weights_sha256"] == full["weights_sha256"]
    records = _train_records(tmp_path / "cut")
    assert len(records) >= 2 and records[0]["step_skipped"]  # step 1 from before the resume, step 2 on from after it
    assert read_metrics(tmp_path / "cut" / "metrics.jsonl") == read_metrics(tmp_path / "full" / "metrics.jsonl")


def _sweep_job(sweep, index: int, overrides: list[str], cfg) -> None:
    """A sweep job's directory as Hydra leaves it: .hydra/overrides.yaml, then the run's files."""
    directory = sweep / str(index)
    (directory / ".hydra").mkdir(parents=True)
    (directory / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    runner.train(cfg, directory)


def test_the_report_reads_the_initial_weights_from_step_1(compose, tmp_path):
    common = ("model=nested", "trainer.max_steps=12", "trainer.threads=1")
    _sweep_job(tmp_path, 0, ["init=xavier"], compose(*common, "init=xavier"))
    _sweep_job(tmp_path, 1, ["init=normal"], compose(*common, "init=normal"))
    write_report(tmp_path)
    firsts = [_train_records(tmp_path / job)[0] for job in ("0", "1")]
    assert [r["step"] for r in firsts] == [1, 1]
    rows = read_csv(tmp_path / "report.csv")
    for row, first in zip(rows, firsts):
        assert float(row["grad_norm_first"]) == pytest.approx(first["grad_norm"], rel=1e-12)
    jobs = read_jobs(tmp_path)
    assert [job.initial for job in jobs] == firsts
    assert jobs[1].at_init("act_std") == {k.split("/", 1)[1]: v for k, v in firsts[1].items() if k.startswith("act_std/")}
    report = (tmp_path / "report.md").read_text()
    low, high = sorted(firsts, key=lambda r: r["grad_norm"])
    assert f"Global gradient norm at step 1 (initial weights) ranges from {low['grad_norm']:.3g}" in report
    stem, last = firsts[1]["act_std/stem"], firsts[1]["act_std/head"]
    assert f"`init=normal`: activation std falls from {stem:.3g} (stem) to {last:.3g} (head) at step 1 (initial weights)." in report
    assert "first logged" not in report
