"""The comparison report of a sweep: report.md, report.csv, report_groups.csv and report.png in the sweep directory.

Jobs that differ only in `seed` form one configuration: report_groups.csv and report.md's "By
configuration" table give each configuration's mean and sample standard deviation over its
finished jobs, and report.png draws its mean validation curve with a band of one deviation.

Written by a Hydra callback at the end of every multirun; `python -m runner.report <sweep dir>`
writes it again, also for a sweep with failed or unfinished jobs.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

try:  # the callback base class; the report itself needs only the files
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object  # type: ignore[assignment,misc]

from runner.run.directory import RunDir, on_initial_weights, read_metrics, reproduce_command
from runner.sweep.report_plot import plot_report

COLUMNS = (
    "job", "overrides", "status", "train_loss", "val_loss", "val_accuracy", "grad_norm_first", "grad_norm_last",
    "steps_per_second", "weights_sha256", "seed", "run", "error", "rerun",
)


GROUP_METRICS = ("val_loss", "val_accuracy", "train_loss", "grad_norm_first", "grad_norm_last")


def metric_columns(jobs: list[Job]) -> tuple[str, ...]:
    """The runs' other `metrics:` (val_top5, val_perplexity, a registered one), in the order first seen:
    columns after val_accuracy, in every table of the report."""
    found = (key for job in jobs for key, value in job.summary.items()
             if key.startswith("val_") and not key.endswith("_ema") and isinstance(value, (int, float)) and key not in COLUMNS)
    return tuple(dict.fromkeys(found))


def _with(columns: tuple[str, ...], extra: tuple[str, ...]) -> tuple[str, ...]:
    """`columns` with `extra` after val_accuracy."""
    at = columns.index("val_accuracy") + 1
    return (*columns[:at], *extra, *columns[at:])


@dataclass
class Job:
    """One job of a sweep, read from its directory."""

    directory: Path
    overrides: list[str]
    status: str  # ok | pruned (by an Optuna search) | failed | unfinished
    summary: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    shared: frozenset[str] = frozenset()  # overrides every job of the sweep has: left out of labels
    train: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    how: str = ""  # the last run of the sweep: trained | reused | resumed | rerun | failed (job.json)

    @property
    def label(self) -> str:
        return " ".join(o for o in self.overrides if o not in self.shared) or self.directory.name

    @property
    def initial(self) -> dict:
        """Returns the train record that describes the initial weights: step 1's, or under float16,
        when step 1 was skipped for overflow, the first step applied after only skipped ones (its
        gradients are still those of the initial weights); {} when the run logged none (metrics
        written before step 1 was always logged)."""
        initial = list(itertools.takewhile(on_initial_weights, self.train))  # they lead the run's records
        return next((r for r in initial if not r.get("step_skipped")), initial[0] if initial else {})

    def at_init(self, stat: str = "grad_norm") -> dict[str, float]:
        """Returns name -> `stat` (grad_norm: per tensor; act_std: per layer) in the initial-weights record."""
        return {k.split("/", 1)[1]: v for k, v in self.initial.items() if k.startswith(f"{stat}/")}

    def row(self) -> dict[str, Any]:
        first, last = self.initial, self.train[-1] if self.train else {}
        s = self.summary
        return {
            "job": self.directory.name, "overrides": " ".join(self.overrides), "status": self.status,
            "train_loss": s.get("train_loss"), "val_loss": s.get("val_loss"), "val_accuracy": s.get("val_accuracy"),
            "grad_norm_first": first.get("grad_norm"), "grad_norm_last": last.get("grad_norm"),
            "steps_per_second": s.get("steps_per_second"), "weights_sha256": s.get("weights_sha256"),
            "seed": s.get("seed"), "run": self.how, "error": self.error,
            "rerun": reproduce_command(self.directory) if RunDir(self.directory).config.is_file() else "",
            **{key: value for key, value in s.items() if key.startswith("val_") and key not in ("val_loss", "val_accuracy")},
        }




def is_seed(override: str) -> bool:
    """True for an override of the top-level `seed` (`seed=3`, `+seed=3`)."""
    return override.split("=", 1)[0].lstrip("+~") == "seed"


@dataclass
class Configuration:
    """The jobs of a sweep that differ only in `seed`."""

    overrides: tuple[str, ...]  # the jobs' overrides, seed left out
    jobs: list[Job]
    shared: frozenset[str] = frozenset()

    @property
    def label(self) -> str:
        return " ".join(o for o in self.overrides if o not in self.shared) or "(every job)"

    @property
    def finished(self) -> list[Job]:
        return [j for j in self.jobs if j.status == "ok"]

    def stats(self, metric: str) -> tuple[float | None, float | None]:
        """The mean and sample standard deviation of `metric` over finished jobs (std None below 2 values)."""
        values = [v for v in (j.row().get(metric) for j in self.finished) if v is not None]
        if not values:
            return None, None
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None

    def row(self, metrics: tuple[str, ...] = GROUP_METRICS) -> dict[str, Any]:
        row: dict[str, Any] = {"configuration": self.label, "n": len(self.finished), "failed": sum(j.status == "failed" for j in self.jobs),
                               "seeds": " ".join(str(j.summary["seed"] if "seed" in j.summary else _seed_of(j)) for j in self.jobs)}
        for metric in metrics:
            row[f"{metric}_mean"], row[f"{metric}_std"] = self.stats(metric)
        return row


def _seed_of(job: Job) -> str:
    """The seed a job's overrides give (`seed=3`, `++seed=3`); '-' for the default (`~seed`, none)."""
    return next((o.partition("=")[2] or "-" for o in job.overrides if is_seed(o)), "-")


def configurations(jobs: list[Job]) -> list[Configuration]:
    """Groups jobs by their overrides without `seed`, in the order their first job comes."""
    groups: dict[tuple[str, ...], list[Job]] = {}
    for job in jobs:
        groups.setdefault(tuple(o for o in job.overrides if not is_seed(o)), []).append(job)
    shared = jobs[0].shared if jobs else frozenset()
    return [Configuration(key, members, frozenset(o for o in shared if not is_seed(o))) for key, members in groups.items()]


def read_jobs(sweep_dir: Path) -> list[Job]:
    """Returns every job directory of the sweep (those Hydra wrote .hydra/ into), in job order."""
    jobs = []
    for directory in sorted((p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()), key=_job_order):
        overrides_file = directory / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
        job = Job(directory, [str(o) for o in overrides or []], "unfinished")
        files = RunDir(directory)
        if files.summary.is_file():
            job.summary = json.loads(files.summary.read_text())
            job.status = "pruned" if job.summary.get("pruned") else "ok"
        elif files.error.is_file():
            job.status, job.error = "failed", json.loads(files.error.read_text())["error"]
        if files.job.is_file():
            record = json.loads(files.job.read_text())
            job.how = record.get("how", "")
            if record.get("status") == "failed":  # the last run of the sweep failed: an older summary is stale
                job.status, job.summary, job.error = "failed", {}, record.get("error", "")
        if files.metrics.is_file():
            records = read_metrics(files.metrics)
            job.train = [r for r in records if r.get("kind") == "train"]
            job.evals = [r for r in records if r.get("kind") == "eval"]
        jobs.append(job)
    shared = frozenset.intersection(*(frozenset(j.overrides) for j in jobs)) if len(jobs) > 1 else frozenset()
    for job in jobs:
        job.shared = shared
    return jobs


def _job_order(path: Path) -> tuple[int, str]:
    return (int(path.name), "") if path.name.isdigit() else (sys.maxsize, path.name)


def tally(jobs: list[Job]) -> str:
    """Returns how many jobs failed out of how many, e.g. "2 of 3 jobs failed" (and how many did not finish)."""
    failed = sum(j.status == "failed" for j in jobs)
    unfinished = sum(j.status == "unfinished" for j in jobs)
    pruned = sum(j.status == "pruned" for j in jobs)
    return (f"{failed} of {len(jobs)} jobs failed" + (f", {unfinished} did not finish" if unfinished else "")
            + (f", {pruned} pruned by the search" if pruned else ""))


def write_report(sweep_dir: str | Path, jobs: list[Job] | None = None) -> list[Path]:
    """Writes report.md, report.csv, report_groups.csv and report.png into the sweep directory; returns their paths.

    `jobs` are the sweep's jobs when already read (read_jobs), read from the directory otherwise.
    """
    sweep_dir = Path(sweep_dir)
    jobs = read_jobs(sweep_dir) if jobs is None else jobs
    rows = [job.row() for job in jobs]
    groups = configurations(jobs)
    extra = metric_columns(jobs)
    columns, metrics = _with(COLUMNS, extra), _with(GROUP_METRICS, extra)
    group_columns = ("configuration", "n", "failed", "seeds", *(f"{m}_{s}" for m in metrics for s in ("mean", "std")))
    _write_csv(sweep_dir / "report.csv", columns, rows)
    _write_csv(sweep_dir / "report_groups.csv", group_columns, [group.row(metrics) for group in groups])
    (sweep_dir / "report.md").write_text(_markdown(jobs, rows, groups, columns, metrics, _objective(sweep_dir)), encoding="utf-8")
    plot_report(jobs, groups, sweep_dir / "report.png")
    return [sweep_dir / "report.md", sweep_dir / "report.csv", sweep_dir / "report_groups.csv", sweep_dir / "report.png"]


def _objective(sweep_dir: Path) -> tuple[str, str]:
    """(summary key, minimize | maximize) that "Best" ranks by: an Optuna search's objective (its
    optimization_results.yaml says which), else the lowest val_loss."""
    import yaml

    results = sweep_dir / "optimization_results.yaml"
    if results.is_file():
        saved = yaml.safe_load(results.read_text(encoding="utf-8")) or {}
        if saved.get("objective") and saved.get("direction") in ("minimize", "maximize"):
            return str(saved["objective"]), str(saved["direction"])
    return "val_loss", "minimize"


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _continued(jobs: list[Job]) -> str:
    """` Continued: 3 jobs reused, 1 resumed, 1 rerun.` when this run of the sweep found earlier work."""
    counts = {how: sum(j.how == how for j in jobs) for how in ("reused", "resumed", "rerun")}
    if not any(counts.values()):
        return ""
    return " Continued from an earlier run of this sweep: " + ", ".join(f"{n} {how}" for how, n in counts.items() if n) + "."


def _mean_std(mean: float, std: float | None) -> str:
    return f"{mean:.4g}" + (f" ± {std:.2g}" if std is not None else "")


def _by_configuration(groups: list[Configuration], metrics: tuple[str, ...]) -> list[str]:
    """report.md's table of configurations: each metric as mean ± std over the finished seeds."""
    if not any(len(g.jobs) > 1 for g in groups):
        return []  # one job per configuration: the job table says it all
    lines = ["", "## By configuration", "", "Mean ± sample standard deviation over each configuration's finished jobs (seeds).", "",
             "| configuration | n | failed | " + " | ".join(metrics) + " |", "|" + "---|" * (3 + len(metrics))]
    for group in groups:
        cells = []
        for metric in metrics:
            mean, std = group.stats(metric)
            cells.append("-" if mean is None else _mean_std(mean, std))
        lines.append(f"| {_cell(group.label)} | {len(group.finished)} | {group.row()['failed']} | " + " | ".join(cells) + " |")
    return lines


def _markdown(jobs: list[Job], rows: list[dict[str, Any]], groups: list[Configuration], columns: tuple[str, ...],
              metrics: tuple[str, ...], objective: tuple[str, str] = ("val_loss", "minimize")) -> str:
    lines = [f"# Sweep report: {len(jobs)} jobs", "", f"{tally(jobs)}.{_continued(jobs)}", ""]
    key, direction = objective
    done = [j for j in jobs if j.status == "ok" and j.summary.get("val_loss") is not None]
    pick = min if direction == "minimize" else max
    by = "" if key == "val_loss" else f" (by {key}, the search's objective, {'lowest' if direction == 'minimize' else 'highest'})"
    scored = [g for g in groups if g.stats(key)[0] is not None]
    if scored:  # the best configuration by its mean over its jobs (seeds), not the luckiest seed; one job: that job
        group = pick(scored, key=lambda g: g.stats(key)[0])
        shown = [k for k in dict.fromkeys((key, "val_loss", "val_accuracy")) if group.stats(k)[0] is not None]
        if len(group.finished) == 1:
            best = group.finished[0]
            lines.append(f"**Best:** job {best.directory.name} (`{best.label}`){by}: " + ", ".join(f"{k} {best.summary[k]:.4g}" for k in shown) + ".")
        else:
            cells = [f"{k} {_mean_std(*group.stats(k))}" for k in shown]
            lines.append(f"**Best:** `{group.label}`{by}, by its mean over its {len(group.finished)} jobs (± sample std): " + ", ".join(cells) + ".")
    if done:
        lines += _why(done)
    failed = [j for j in jobs if j.status != "ok"]
    if failed:
        lines.append("")
        lines.append("**Not finished:** " + "; ".join(f"job {j.directory.name} (`{j.label}`): {j.status}{': ' + j.error if j.error else ''}" for j in failed))
    lines += _by_configuration(groups, metrics)
    lines += ["", "## Jobs", "", "| " + " | ".join(c for c in columns if c != "rerun") + " |", "|" + "---|" * (len(columns) - 1)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns if c != "rerun") + " |")
    lines += ["", "Rerun any job alone:", ""]
    lines += [f"- job {row['job']}: `{row['rerun']}`" for row in rows if row["rerun"]]
    lines += ["", "![loss curves, gradient norms and activation std at step 1 (initial weights)](report.png)", ""]
    return "\n".join(lines)


def _why(done: list[Job]) -> list[str]:
    """Returns sentences that point at vanishing or exploding gradients and activations at initialization
    (each job's initial-weights record: step 1's, or the step named when float16 skipped step 1)."""
    starts = [(j, j.initial["grad_norm"]) for j in done if "grad_norm" in j.initial]
    lines = []
    if len(starts) >= 2:
        low, high = min(starts, key=lambda p: p[1]), max(starts, key=lambda p: p[1])
        lines.append(f"Global gradient norm at step 1 (initial weights) ranges from {low[1]:.3g} (`{low[0].label}`{_later(low[0])}) "
                     f"to {high[1]:.3g} (`{high[0].label}`{_later(high[0])}).")
    for job, norm in starts:
        layers = job.at_init()
        if len(layers) >= 2:
            smallest, largest = min(layers.values()), max(layers.values())
            if smallest > 0 and largest / smallest > 100:
                lines.append(f"`{job.label}`: per-tensor gradient norms at step 1 (initial weights{_later(job)}) span {largest / smallest:.3g}x "
                             f"(smallest {min(layers, key=layers.get)}, largest {max(layers, key=layers.get)}).")
    for job in done:
        stds = job.at_init("act_std")
        positive = {name: value for name, value in stds.items() if value > 0}
        if len(positive) >= 2:
            (first, start), (last, end) = next(iter(positive.items())), list(positive.items())[-1]
            if end / start < 0.1 or end / start > 10:  # a tenfold change through the network
                trend = "falls" if end < start else "grows"
                lines.append(f"`{job.label}`: activation std {trend} from {start:.3g} ({first}) to {end:.3g} ({last}) "
                             f"at step 1 (initial weights{_later(job)}).")
    return [" ".join(lines)] if lines else []


def _later(job: Job) -> str:
    """`, step 3` when float16 skipped the first steps and the job's initial-weights record is a later step's."""
    step = job.initial.get("step", 1)
    return f", step {step}" if step != 1 else ""


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value).replace("|", "\\|")


class SweepReport(Callback):  # type: ignore[misc,valid-type]
    """Hydra callback: writes the report into the sweep directory when a multirun ends."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        """Writes the report, says how many jobs failed, and exits 1 when every job failed."""
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        jobs = read_jobs(sweep_dir)
        written = write_report(sweep_dir, jobs)
        print(f"sweep report: {written[0]}")
        failed = [j for j in jobs if j.status in ("failed", "unfinished")]  # the sweep is over: an unfinished job died
        if not failed:
            return
        message = f"runner: sweep: {tally(jobs)} (see {written[0]})"
        if len(failed) < len(jobs):
            print(message, file=sys.stderr)
            return
        # Hydra's callback runner swallows Exceptions but not SystemExit, which ends the process once
        # the sweep is done. A string, not the code 1: Python prints it on stderr and exits 1, and
        # `runner.cli` does not read it as Hydra's exit 1 for a bad override (which it turns into 2
        # when no job ran in this process, as with the joblib and submitit launchers).
        raise SystemExit(message)


def main(argv: list[str]) -> None:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python -m runner.report <sweep dir>", file=sys.stderr)
        sys.exit(2)
    print(f"sweep report: {write_report(Path(argv[0]))[0]}")


