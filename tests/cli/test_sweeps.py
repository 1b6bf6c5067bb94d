"""Multirun sweeps end in a report; scale-out runs on Hydra's launchers, Optuna and torchrun DDP."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import runner
from conftest import QUIET, TINY, read_csv, run_cli, run_module, torchrun
from runner.sweep.report import write_report

pytestmark = pytest.mark.slow
SCHEMES = "init=xavier,kaiming,normal,orthogonal"


def rows(sweep_dir) -> list[dict]:
    return read_csv(sweep_dir / "report.csv")


@pytest.fixture(scope="module")
def sequential_sweep(tmp_path_factory):
    sweep = tmp_path_factory.mktemp("sequential")
    result = run_cli("-m", SCHEMES, *TINY, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    return sweep


@pytest.mark.xdist_group("sequential_sweep")  # the module fixture is built on one worker
def test_four_scheme_sweep_writes_a_report_with_one_row_per_job(sequential_sweep):
    table = rows(sequential_sweep)
    assert [r["overrides"].split()[0] for r in table] == ["init=xavier", "init=kaiming", "init=normal", "init=orthogonal"]
    for row in table:
        assert row["status"] == "ok" and float(row["val_loss"]) > 0 and 0 <= float(row["val_accuracy"]) <= 1
        assert float(row["grad_norm_first"]) > 0 and len(row["weights_sha256"]) == 64
        assert row["rerun"].startswith("python -m runner --config-path ")
    assert len({r["weights_sha256"] for r in table}) == 4
    report = (sequential_sweep / "report.md").read_text()
    best = min(table, key=lambda r: float(r["val_loss"]))
    assert f"**Best:** job {best['job']} (`{best['overrides'].split()[0]}`)" in report
    assert (sequential_sweep / "report.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.xdist_group("sequential_sweep")  # the module fixture is built on one worker
def test_normal_init_starts_with_the_smallest_gradients(sequential_sweep):
    # std 0.01 weights shrink the backpropagated signal: the report's grad column shows it.
    table = {r["overrides"].split()[0]: float(r["grad_norm_first"]) for r in rows(sequential_sweep)}
    assert min(table, key=table.get) == "init=normal"


@pytest.mark.xdist_group("sequential_sweep")  # the module fixture is built on one worker
def test_the_report_points_at_vanishing_activations(sequential_sweep):
    # N(0, 0.01^2) weights shrink the forward signal over 10x from fc1 to head; xavier keeps it within 2x.
    report = (sequential_sweep / "report.md").read_text()
    job = next(r["job"] for r in rows(sequential_sweep) if r["overrides"].startswith("init=normal"))
    first = next(json.loads(line) for line in (sequential_sweep / job / "metrics.jsonl").read_text().splitlines() if '"train"' in line)
    assert first["step"] == 1
    fc1, head = first["act_std/fc1"], first["act_std/head"]
    assert head / fc1 < 0.1
    assert f"`init=normal`: activation std falls from {fc1:.3g} (fc1) to {head:.3g} (head) at step 1 (initial weights)." in report
    assert "`init=xavier`: activation std" not in report


@pytest.mark.xdist_group("sequential_sweep")  # the module fixture is built on one worker
def test_joblib_sweep_equals_the_sequential_one(sequential_sweep, tmp_path):
    result = run_cli("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", SCHEMES, *TINY, f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    assert [r["weights_sha256"] for r in rows(tmp_path)] == [r["weights_sha256"] for r in rows(sequential_sweep)]


def test_joblib_shares_the_cores_among_its_jobs(tmp_path):
    without_threads = [t for t in TINY if not t.startswith("trainer.threads")]
    # A real process: joblib pickles the task for its workers, and the real stderr cannot be pickled (a test
    # process's StringIO can, which once hid that the held stderr rode along with the task).
    result = run_cli("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1", *without_threads, f"hydra.sweep.dir={tmp_path}",
                     process=True)
    assert result.returncode == 0, result.stderr
    expected = max(1, (os.cpu_count() or 1) // min(2, os.cpu_count() or 1))
    for job in ("0", "1"):
        assert f"threads: {expected}" in (tmp_path / job / "config.yaml").read_text()


def test_submitit_local_launcher_completes(tmp_path):
    result = run_cli("-m", "hydra/launcher=submitit_local", "seed=0,1", *TINY, f"hydra.sweep.dir={tmp_path}", timeout=300)
    assert result.returncode == 0, result.stderr
    assert [r["status"] for r in rows(tmp_path)] == ["ok", "ok"]


def test_optuna_sweep_of_three_trials(tmp_path):
    result = run_cli("-m", "+search=lr_init", "hydra.sweeper.n_trials=3", *TINY, f"hydra.sweep.dir={tmp_path}", timeout=300)
    assert result.returncode == 0, result.stderr
    best = (tmp_path / "optimization_results.yaml").read_text()
    assert "best_params" in best and "optim.lr" in best
    assert len(rows(tmp_path)) == 3


def test_a_failing_job_is_listed_and_the_sweep_goes_on(tmp_path):
    result = run_cli("-m", "model.layers.fc1.type=Linear,Linaer", *TINY, f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    table = rows(tmp_path)
    assert [r["status"] for r in table] == ["ok", "failed"]
    assert "did you mean 'Linear'" in table[1]["error"]
    assert "**Not finished:** job 1 (`model.layers.fc1.type=Linaer`): failed" in (tmp_path / "report.md").read_text()
    # An unfinished job (killed before its summary) is reported too, by `python -m runner.report`.
    (tmp_path / "0" / "summary.json").unlink()
    regenerated = run_module("runner.report", str(tmp_path))
    assert regenerated.returncode == 0, regenerated.stderr
    assert [r["status"] for r in rows(tmp_path)] == ["unfinished", "failed"]


def _single_and_ddp(tmp_path, *overrides: str):
    """Trains TINY for 30 steps in this process and under 2-process DDP (torchrun, the real CLI), and
    checks that the weights match."""
    args = [*[t for t in TINY if not t.startswith(tuple(o.split("=")[0] + "=" for o in overrides))], "trainer.max_steps=30", *overrides]
    runner.train(runner.compose(args), tmp_path / "single")
    ddp = torchrun(["trainer.strategy=ddp", *args, f"hydra.run.dir={tmp_path / 'ddp'}"])
    assert ddp.returncode == 0, ddp.stderr
    a, b = runner.load(tmp_path / "single"), runner.load(tmp_path / "ddp")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=name)


def test_two_process_ddp_matches_single_process_training(tmp_path):
    # Histograms on steps that are not logged (5, 10 against log_every=7): rank 0 alone writes them, and a
    # collective there would wait for ranks that never join it.
    _single_and_ddp(tmp_path, "trainer.tensorboard=true", "trainer.log_every=7", "trainer.hist_every=5")
    metrics = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == len((tmp_path / "single" / "metrics.jsonl").read_text().splitlines())  # rank 0 alone wrote
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "ddp"), size_guidance={"histograms": 0}).Reload()
    assert [e.step for e in events.Histograms("weights/fc1.weight")] == [5, 10, 15, 20, 25, 30]


def test_ddp_with_accumulation_equals_one_process_on_the_big_batch(tmp_path):
    # 2 ranks x 2 accumulated batches of 16 rows = one step on 64 rows; only the last backward all-reduces.
    _single_and_ddp(tmp_path, "trainer.batch_size=32", "trainer.accumulate_grad_batches=2")


def test_ddp_whose_workers_read_each_rank_s_part_equals_one_process(tmp_path):
    # Each rank's loader worker reads its part of each batch, and the step weighs the shards by their global batch's
    # rows: 1438 training rows in batches of 47 split 24/23 between the ranks, and each epoch ends on a batch of 28
    # alone (2 accumulated); plain SGD, whose step shows any error in the gradient's scale.
    _single_and_ddp(tmp_path, "data.loader.num_workers=1", "trainer.batch_size=47", "trainer.accumulate_grad_batches=2", "optim=sgd")


@pytest.mark.xdist_group("sequential_sweep")  # the module fixture is built on one worker
def test_report_regenerates_from_python(sequential_sweep):
    written = write_report(sequential_sweep)
    assert [p.name for p in written] == ["report.md", "report.csv", "report_groups.csv", "report.png"]
    assert json.loads((sequential_sweep / "0" / "summary.json").read_text())["weights_sha256"] == rows(sequential_sweep)[0]["weights_sha256"]


def test_a_sweep_over_a_model_variable_builds_each_size(tmp_path):
    # A model variable (model.vars) is a sweep axis like any other key.
    done = run_cli("-m", "experiment=nanogpt", "model.vars.n_layer=1,2", *QUIET, "trainer.max_steps=1",
                   "data.num_samples=64", f"hydra.sweep.dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-2000:]
    for job, layers in ((0, 1), (1, 2)):
        model = runner.load(tmp_path / str(job))
        assert sorted({name.split(".")[2] for name, _ in model.named_parameters() if name.startswith("transformer.h.")}) == [str(i) for i in range(layers)]


@pytest.mark.parametrize("workers", [0, 1])
def test_under_ddp_each_rank_reads_its_own_rows_and_the_epoch_covers_every_sample_once(tmp_path, workers):
    # Two torchrun ranks, one epoch: a plugin callback records the rows each rank's loader served and its model trained on.
    from conftest import env_with, install
    from runner.data.sources import load_data

    install(tmp_path / "site", "rows-plugin", "[runner.callbacks]\nplug_rows = runner_test_plugin:PlugRows\n")
    data = ["data=synthetic", "data.num_samples=200", "trainer.batch_size=32", "trainer.epochs=1", f"data.loader.num_workers={workers}"]
    env = env_with(tmp_path / "site", tmp_path / "imported")
    ddp = torchrun(["trainer.strategy=ddp", *TINY[2:], *data, f"trainer.callbacks=[{{name: plug_rows, directory: '{tmp_path}'}}]",
                    f"hydra.run.dir={tmp_path / 'ddp'}"], env)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    ranks = [np.load(tmp_path / f"rows_rank{rank}.npy") for rank in (0, 1)]
    train = load_data(runner.compose(data).data).train_x.numpy()  # 160 rows: 5 global batches of 32, 16 rows a rank each
    assert [len(rows) for rows in ranks] == [80, 80]
    seen = np.concatenate(ranks)
    assert sorted(map(bytes, seen)) == sorted(map(bytes, train))  # every training row once, none twice, no rank's row on the other
    served = [np.load(tmp_path / f"served_rank{rank}.npy") for rank in (0, 1)]
    assert all(np.array_equal(a, b) for a, b in zip(served, ranks))  # each rank was served only its rows: what it trained on
