"""A sweep's progress while it runs: jobs done of the total, failures so far, and the time left; a
failing job's error the moment it fails.

A Hydra callback (conf/config.yaml). It counts the job.json files the jobs wrote during this run
of the sweep, so the count holds under parallel launchers, where each joblib worker calls
`on_job_end` for its own jobs.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from runner.config.compose import first_value
from runner.run.directory import RunDir, write_json
from runner.sweep.report import Callback

STATE = ".progress.json"  # in the sweep directory: the job count and when this run of the sweep started
# The sweep directories this process's sweeps created at their start (Hydra instantiates the callback; this is how
# runner.cli learns them): a sweep whose jobs Hydra refuses to compose is removed again.
created: list[Path] = []


def sweep_size(config: Any) -> int | None:
    """Returns how many jobs the multirun launches: Optuna's n_trials, or the size of the basic
    sweeper's product of sweep overrides (`hydra.sweeper.params`, then the command line's)."""
    sweeper = config.hydra.sweeper
    if "optuna" in str(sweeper.get("_target_", "")).lower():
        return int(sweeper.n_trials)
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    by_key = {str(k): f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()}
    by_key.update({o.split("=", 1)[0]: o for o in config.hydra.overrides.task})  # the command line wins, as in Hydra
    from hydra.core.global_hydra import GlobalHydra

    # With Hydra's config loader the parser expands `glob(*)` over the group's options, as the sweeper does.
    loader = GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(list(by_key.values()))
    return sum(len(batch) for batch in BasicSweeper.split_arguments(parsed, None))


def duration(seconds: float) -> str:
    """`45s`, `3m 05s`, `2h 10m`."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def progress_line(sweep_dir: Path, state: dict[str, Any], now: float) -> str:
    """`sweep: 3/8 jobs done (1 reused), 1 failed, about 2m 10s left`, from the job.json files of this run."""
    records = []
    for path in sweep_dir.glob("*/job.json"):
        try:
            if path.stat().st_mtime >= state["started"]:
                records.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue  # a file another worker is replacing right now: counted next time
    done, total = len(records), state.get("total")
    reused = sum(r.get("how") == "reused" for r in records)
    failed = sum(r.get("status") == "failed" for r in records)
    line = f"sweep: {done}/{total if total is not None else '?'} jobs done"
    line += f" ({reused} reused)" if reused else ""
    line += f", {failed} failed"
    worked = done - reused  # reused jobs take no time: the rate is that of the jobs that ran
    if total is not None and worked and total > done:
        line += f", about {duration((now - state['started']) / worked * (total - done))} left"
    return line


def one_line(message: str) -> str:
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


class SweepProgress(Callback):  # type: ignore[misc,valid-type]
    """Hydra callback: the sweep's size at its start; after each job, the count so far and a failure's error."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            total = sweep_size(config)
        except Exception:  # noqa: BLE001 - a sweeper this does not know: progress without a total
            total = None
        if not sweep_dir.exists():
            created.append(sweep_dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        fixed = [o for o in config.hydra.overrides.task if first_value(o) == o]  # no sweep: on every job, not worth repeating
        write_json(sweep_dir / STATE, {"total": total, "started": time.time(), "fixed": fixed})
        quiet_console()
        print(f"sweep: {total if total is not None else 'an unknown number of'} jobs into {sweep_dir}", file=sys.stderr, flush=True)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        created.clear()  # the sweep ran: its directory is the user's now

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        sweep_dir, run_dir = Path(config.hydra.sweep.dir), Path(config.hydra.runtime.output_dir)
        try:
            state = json.loads((sweep_dir / STATE).read_text(encoding="utf-8"))
            record = json.loads(RunDir(run_dir).job.read_text(encoding="utf-8"))
            if RunDir(run_dir).job.stat().st_mtime < state["started"]:
                return  # an earlier run's record: this job never reached our code (Hydra reports why)
        except (OSError, ValueError):
            return  # no job.json: the job never reached our code (Hydra reports why)
        fixed = {o.split("=", 1)[0] for o in state.get("fixed", ())}
        label = " ".join(o for o in job_return.overrides or [] if o.split("=", 1)[0] not in fixed and not o.lstrip("+~").startswith("hydra."))
        if record.get("status") == "failed":
            outcome = f"failed: {one_line(record.get('error', ''))}"
        else:
            summary = RunDir(run_dir).summary
            loss = json.loads(summary.read_text(encoding="utf-8")).get("val_loss") if summary.is_file() else None
            outcome = ("reused" if record.get("how") == "reused" else "done") + (f", val_loss {loss:.4g}" if loss is not None else "")
        # One line a job: what it was and how it ended, then the sweep's count and time left.
        print(f"sweep: job {config.hydra.job.num} ({label or 'no overrides'}) {outcome} | "
              f"{progress_line(sweep_dir, state, time.time()).removeprefix('sweep: ')}", file=sys.stderr, flush=True)


class QuietJob(logging.Filter):
    """On a sweep's console: a job's warnings and errors, not its per-epoch lines (each job's cli.log has every
    line); on the launchers' loggers: not the `#N : overrides` line for each job, which would show internal
    overrides too (the progress line says what each job was)."""

    LAUNCHERS = ("hydra._internal.core_plugins.basic_launcher", "hydra_plugins.hydra_joblib_launcher._core",
                 "hydra_plugins.hydra_submitit_launcher.submitit_launcher")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name in self.LAUNCHERS:
            return not str(record.msg).lstrip().startswith("#")
        return record.levelno >= logging.WARNING or record.name.startswith("hydra")


def quiet_console() -> None:
    """Puts QuietJob on the launchers' loggers and the root logger's console handlers (Hydra gives each job new
    handlers, so a job calls this again)."""
    targets = [logging.getLogger(name) for name in QuietJob.LAUNCHERS]
    targets += [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    for target in targets:
        if not any(isinstance(f, QuietJob) for f in target.filters):
            target.addFilter(QuietJob())
