"""Sweeps: seeds aggregated per configuration, a killed sweep continued, progress as it runs, TensorBoard HParams."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from omegaconf import OmegaConf

import runner
from conftest import REPO, TINY, read_csv, run_cli
from runner.sweep.progress import duration, progress_line, sweep_size
from runner.sweep.report import GROUP_METRICS

JOB = [o for o in TINY if not o.startswith("trainer.tensorboard")]  # TensorBoard on: the report reads the hparams back from it


_csv = read_csv


@pytest.fixture(scope="module")
def seeded_sweep(tmp_path_factory):
    sweep = tmp_path_factory.mktemp("seeded")
    result = run_cli("-m", "init=xavier,normal", "seed=0,1,2", *JOB, f"hydra.sweep.dir={sweep}", timeout=300)
    assert result.returncode == 0, result.stderr
    return sweep, result


@pytest.mark.xdist_group("seeded_sweep")  # the module fixture is built on one worker
@pytest.mark.slow
def test_seed_groups_are_the_mean_and_sample_std_of_the_jobs(seeded_sweep):
    sweep, _ = seeded_sweep
    jobs, groups = _csv(sweep / "report.csv"), _csv(sweep / "report_groups.csv")
    assert [g["configuration"] for g in groups] == ["init=xavier", "init=normal"]
    for group in groups:
        members = [j for j in jobs if j["overrides"].split()[0] == group["configuration"]]
        assert sorted(j["seed"] for j in members) == ["0", "1", "2"] and group["n"] == "3" and group["failed"] == "0"
        for metric in GROUP_METRICS:
            values = np.array([float(j[metric]) for j in members])
            assert float(group[f"{metric}_mean"]) == pytest.approx(values.mean(), rel=1e-12), metric
            assert float(group[f"{metric}_std"]) == pytest.approx(values.std(ddof=1), rel=1e-9), metric
    report = (sweep / "report.md").read_text()
    xavier = groups[0]
    cell = f"{float(xavier['val_loss_mean']):.4g} ± {float(xavier['val_loss_std']):.2g}"
    assert "## By configuration" in report and f"| init=xavier | 3 | 0 | {cell} |" in report
    assert (sweep / "report.png").read_bytes()[:4] == b"\x89PNG"
    # Best: the configuration with the lowest mean over its seeds, with its spread; not the luckiest single job.
    best = min(groups, key=lambda g: float(g["val_loss_mean"]))
    assert (f"**Best:** `{best['configuration']}`, by its mean over its 3 jobs (± sample std): val_loss {float(best['val_loss_mean']):.4g} ± "
            f"{float(best['val_loss_std']):.2g}, val_accuracy ") in report


@pytest.mark.xdist_group("seeded_sweep")  # the module fixture is built on one worker
@pytest.mark.slow
def test_the_report_figure_draws_each_configuration_once_with_its_seeds_around_its_mean(seeded_sweep, tmp_path):
    from runner.run.directory import read_metrics
    from runner.sweep.report import configurations, read_jobs
    from runner.sweep.report_plot import plot_report, styles

    assert len(set(styles(20))) == 20  # distinct (colour, line style) for 20 configurations
    sweep, _ = seeded_sweep
    jobs = read_jobs(sweep)
    fig = plot_report(jobs, configurations(jobs), tmp_path / "report.png")
    curves, bars, acts = fig.axes
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["init=xavier (n=3)", "init=normal (n=3)"]
    assert not any(axes.get_legend() for axes in fig.axes)  # one legend, for the figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    legend_left = fig.legends[0].get_window_extent(FigureCanvasAgg(fig).get_renderer()).x0
    assert all(legend_left >= axes.get_window_extent().x1 for axes in fig.axes)  # beside the panels, not on the data
    for index, init in enumerate(("xavier", "normal")):
        members = sorted(sweep.glob("[0-9]*"), key=lambda d: int(d.name))[index * 3 : index * 3 + 3]
        evals = [[r for r in read_metrics(d / "metrics.jsonl") if r["kind"] == "eval"] for d in members]
        thin, mean = curves.lines[index * 4 : index * 4 + 3], curves.lines[index * 4 + 3]
        expected = np.mean([[r["val_loss"] for r in e] for e in evals], axis=0)
        np.testing.assert_allclose(mean.get_ydata(), expected, rtol=1e-12)
        assert mean.get_linewidth() > thin[0].get_linewidth() and {line.get_color() for line in [*thin, mean]} == {mean.get_color()}
        steps = [r["step"] for r in evals[0]]
        assert list(mean.get_xdata()) == steps
    assert len(curves.lines) == 8 and len(acts.lines) == 8  # 3 seeds and a mean for each configuration
    assert len(bars.patches) == 2 * 6  # a bar per configuration and tensor (6 tensors), not per job


@pytest.mark.xdist_group("seeded_sweep")  # the module fixture is built on one worker
@pytest.mark.slow
def test_progress_is_printed_as_each_job_ends(seeded_sweep):
    _, result = seeded_sweep
    lines = [line for line in result.stderr.splitlines() if line.startswith("sweep: ")]
    assert lines[0].startswith("sweep: 6 jobs into ")
    # One line a job: what it was (the swept overrides only), how it ended, then the count and the time left.
    labels = [f"init={init} seed={seed}" for init in ("xavier", "normal") for seed in (0, 1, 2)]
    assert [line.split(") done, val_loss ")[0] for line in lines[1:]] == [f"sweep: job {n} ({label}" for n, label in enumerate(labels)]
    assert [line.split(" | ")[1].split(" jobs done")[0] for line in lines[1:]] == [f"{n}/6" for n in range(1, 7)]
    assert all(", 0 failed" in line for line in lines[1:]) and "left" in lines[1] and "left" not in lines[-1]
    assert " : init=" not in result.stdout  # the launcher's `#N : overrides` lines are not shown


@pytest.mark.slow
def test_a_failing_job_is_named_when_it_fails(tmp_path):
    result = run_cli("-m", "trainer.batch_size=0,64", "trainer.max_steps=3", "trainer.progress=off", "trainer.tensorboard=false",
                     "trainer.plots=false", f"hydra.sweep.dir={tmp_path}")
    lines = [line for line in result.stderr.splitlines() if line.startswith("sweep: ")]
    assert lines[1].startswith("sweep: job 0 (trainer.batch_size=0) failed: config error: trainer.batch_size: expected a number > 0, got 0 | "
                               "1/2 jobs done, 1 failed, about ")
    assert lines[2].startswith("sweep: job 1 (trainer.batch_size=64) done, val_loss ") and lines[2].endswith(" | 2/2 jobs done, 1 failed")


@pytest.mark.xdist_group("seeded_sweep")  # the module fixture is built on one worker
@pytest.mark.slow
def test_hparams_are_read_back_by_tensorboard(seeded_sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    sweep, _ = seeded_sweep
    job = next(j for j in _csv(sweep / "report.csv") if j["overrides"].startswith("init=normal seed=2"))
    events = EventAccumulator(str(sweep / job["job"]))
    events.Reload()
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    params = {k: v.string_value or v.number_value for k, v in start.hparams.items()}
    assert params == {"init": "normal", "seed": 2, "trainer.max_steps": 12, "trainer.log_every": 4, "trainer.threads": 1,
                      "trainer.progress": "off", "trainer.plots": "false"}
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    assert [m.name.tag for m in experiment.metric_infos] == ["eval/val_loss", "eval/val_accuracy"]
    # The dashboard shows a metric's last scalar of that tag: the run's final validation loss.
    assert events.Scalars("eval/val_loss")[-1].value == pytest.approx(float(job["val_loss"]), rel=1e-6)


@pytest.mark.slow
def test_a_killed_sweep_continues_with_every_job_done_once(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "init=xavier,normal,kaiming", "trainer.max_steps=300", "trainer.ckpt_every=20", "trainer.keep_last=20",
            "trainer.threads=1", "trainer.progress=off", "trainer.tensorboard=false", "trainer.plots=false", f"hydra.sweep.dir={sweep}"]
    process = subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 120
    while not list((sweep / "1" / "checkpoints").glob("step_*/manifest.json")) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)  # job 0 done, job 1 part-way, job 2 never started
    process.wait()
    assert (sweep / "0" / "summary.json").is_file() and not (sweep / "1" / "summary.json").is_file()
    assert not (sweep / "2").exists()
    finished_at = (sweep / "0" / "summary.json").stat().st_mtime_ns
    result = run_cli(*args, timeout=300)
    assert result.returncode == 0, result.stderr
    assert [json.loads((sweep / j / "job.json").read_text())["how"] for j in "012"] == ["reused", "resumed", "trained"]
    assert (sweep / "0" / "summary.json").stat().st_mtime_ns == finished_at  # not trained again
    # The resumed job ends where one uninterrupted run of its config does.
    alone = runner.train(runner.compose(["init=normal", *[a for a in args[2:] if not a.startswith("hydra.")]]), tmp_path / "alone")
    assert json.loads((sweep / "1" / "summary.json").read_text())["weights_sha256"] == alone["weights_sha256"]
    rows = _csv(sweep / "report.csv")
    assert [r["status"] for r in rows] == ["ok"] * 3 and [r["run"] for r in rows] == ["reused", "resumed", "trained"]
    assert "Continued from an earlier run of this sweep: 1 reused, 1 resumed." in (sweep / "report.md").read_text()
    # A job that failed is run again, from scratch; a changed config too.
    (sweep / "0" / "summary.json").unlink()
    (sweep / "0" / "error.json").write_text(json.dumps({"error": "it failed"}))
    again = run_cli(*args[:1], "init=xavier,normal,kaiming", "trainer.max_steps=301", *args[3:], timeout=300)
    assert again.returncode == 0, again.stderr
    assert [json.loads((sweep / j / "job.json").read_text())["how"] for j in "012"] == ["rerun"] * 3
    assert not (sweep / "0" / "error.json").exists() and [r["status"] for r in _csv(sweep / "report.csv")] == ["ok"] * 3


def test_a_failure_in_the_last_run_of_a_sweep_outranks_an_older_summary(tmp_path):
    from runner.sweep.report import read_jobs

    job = tmp_path / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- init=xavier\n")
    (job / "summary.json").write_text(json.dumps({"val_loss": 0.5, "seed": 0}))  # from an earlier run of the sweep
    (job / "error.json").write_text(json.dumps({"error": "config error: data.path: no such file"}))
    (job / "job.json").write_text(json.dumps({"status": "failed", "how": "failed", "error": "config error: data.path: no such file"}))
    (found,) = read_jobs(tmp_path)
    assert found.status == "failed" and found.summary == {} and found.error == "config error: data.path: no such file"


def test_progress_arithmetic(tmp_path):
    now = 1_000_000.0
    for job, how in enumerate(["reused", "trained", "trained", "failed"]):
        (tmp_path / str(job)).mkdir()
        (tmp_path / str(job) / "job.json").write_text(json.dumps({"status": "failed" if how == "failed" else "ok", "how": how}))
        os.utime(tmp_path / str(job) / "job.json", (now, now))
    (tmp_path / "9").mkdir()
    (tmp_path / "9" / "job.json").write_text(json.dumps({"status": "ok", "how": "trained"}))
    os.utime(tmp_path / "9" / "job.json", (now - 500, now - 500))  # from an earlier run of the sweep: not counted
    line = progress_line(tmp_path, {"total": 10, "started": now - 300}, now)
    # 4 done, 1 of them reused: 300 s over 3 jobs that ran, 6 to go.
    assert line == "sweep: 4/10 jobs done (1 reused), 1 failed, about 10m 00s left"
    assert duration(59.6) == "1m 00s" and duration(3 * 3600 + 125) == "3h 02m"


def test_sweep_size_counts_the_product_of_sweeps():
    basic = OmegaConf.create({"hydra": {"sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                                                    "params": {"optim.lr": "0.1,0.01", "seed": "0,1"}},
                                        "overrides": {"task": ["init=xavier,kaiming,normal", "seed=range(4)", "trainer.epochs=2"]}}})
    assert sweep_size(basic) == 2 * 3 * 4  # the command line's seed replaces the params' seed
    optuna = OmegaConf.create({"hydra": {"sweeper": {"_target_": "hydra_plugins.runner_optuna.optuna_sweeper.OptunaSweeper", "n_trials": 7},
                                         "overrides": {"task": []}}})
    assert sweep_size(optuna) == 7


@pytest.mark.slow
def test_a_glob_sweep_is_counted_up_front_and_its_jobs_log_to_their_own_files(tmp_path):
    options = sorted(p.stem for p in (REPO / "conf" / "init").glob("xavier*.yaml"))
    result = run_cli("-m", "init=glob(xavier*)", "trainer.max_steps=2", "trainer.progress=log", "trainer.tensorboard=false",
                     "trainer.plots=false", "trainer.threads=1", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("sweep: ")]
    assert lines[0] == f"sweep: {len(options)} jobs into {tmp_path}"  # not "an unknown number of"
    assert all(f"/{len(options)} jobs done" in line for line in lines[1:]) and len(lines) == 1 + len(options)
    assert "epoch 0 step" not in result.stdout + result.stderr  # the per-epoch lines went to each job's log
    assert all("epoch 0 step 2/2" in (tmp_path / str(n) / "cli.log").read_text() for n in range(len(options)))


@pytest.mark.slow
def test_a_jobs_line_names_only_what_the_sweep_varies_even_beside_a_fixed_list(tmp_path):
    # `trainer.watch=[fc1,head]` holds a comma but sweeps nothing: Hydra's parser, not the comma, says so.
    result = run_cli("-m", "seed=0,1", "trainer.watch=[fc1,head]", *JOB, f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("sweep: job ")]
    assert [line.split(") ")[0] for line in lines] == ["sweep: job 0 (seed=0", "sweep: job 1 (seed=1"]
