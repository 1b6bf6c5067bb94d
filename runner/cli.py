"""`python -m runner`: Hydra composes the config; plain functions do the work."""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from runner.config.schema import conf_dir
from runner.errors import ConfigError, Interrupted, Problem, RunError, hold_stderr, release_stderr, report_errors
from runner.run.directory import RunDir

T = TypeVar("T")


@dataclass
class Invocation:
    """One `python -m runner` command: what the Hydra task needs to know beyond the config, passed
    in rather than kept in module globals."""

    # Set once our own code has the run in hand (Hydra called the task, or we reported an error
    # ourselves): an exit 1 before that is Hydra's own report of a bad override, a config error: 2.
    ours: bool = False
    # (latest checkpoint, run directory) while `resume=<dir>` runs: the run continues in its own
    # directory, whatever hydra.run.dir says.
    resuming: tuple[Path, Path] | None = None

    def report(self, work: Callable[[], T]) -> T:
        """report_errors, after which the exit status is ours."""
        self.ours = True
        return report_errors(work)

    def task(self, cfg: DictConfig) -> float | None:
        """The work of one composed config: a run, a sweep's job, or a resumed run."""
        self.ours = True
        release_stderr()
        hydra_cfg = HydraConfig.get()
        run_dir = Path(hydra_cfg.runtime.output_dir)
        try:
            return self._task(cfg, hydra_cfg, run_dir)
        except SystemExit:  # a new run that failed before it wrote anything leaves no directory behind
            if hydra_cfg.mode != RunMode.MULTIRUN and self.resuming is None:
                _remove_if_unused(run_dir, f"{hydra_cfg.job.name}.log")
            raise

    def _task(self, cfg: DictConfig, hydra_cfg: DictConfig, run_dir: Path) -> float | None:
        cfg.trainer.threads = job_threads(cfg.trainer.threads, hydra_cfg)
        report_errors(lambda: _check_overrides(hydra_cfg.overrides.task, cfg, hydra_cfg.runtime))
        if hydra_cfg.mode == RunMode.MULTIRUN:
            from runner.sweep.progress import quiet_console

            quiet_console()  # this job's lines go to its cli.log; the sweep's console has one line a job
            if cfg.get("tracker") is not None and cfg.tracker.get("experiment") is None:
                cfg.tracker.experiment = str(hydra_cfg.sweep.dir)  # the sweep is one MLflow experiment
            return _sweep_job(cfg, run_dir)
        from runner import api

        if self.resuming is not None:
            latest, run_dir = self.resuming
            summary = report_errors(lambda: api.continue_run(cfg, run_dir, latest))
        else:
            summary = report_errors(lambda: api.train(cfg, run_dir))
        print(f"run directory: {run_dir}")
        return summary.get("val_loss")

    def run_hydra(self, config_path: str, overrides: list[str]) -> None:
        """Hands the command line to Hydra with this invocation's task. Until the task starts, what Hydra
        writes to stderr is held: a refusal of the command line (a misspelt key, an unknown option, a YAML
        error in a config file) is then reported as every config error is, from runner's own composition."""
        hold_stderr()  # on sys.stderr itself, not on this object: joblib pickles the task (and so this object) for its workers
        try:
            hydra.main(config_path=config_path, config_name="config", version_base="1.3")(self.task)()
        except SystemExit as leaving:
            if leaving.code == 1 and not self.ours:  # Hydra rejected the command line before any work
                held = release_stderr(show=False)
                _remove_refused_sweep()
                self.report(lambda: _compose_error(config_path, overrides))
                sys.stderr.write(held)  # not a composition error runner can name: Hydra's own report
                sys.exit(2)
            raise
        finally:
            release_stderr()


def main(argv: list[str] | None = None) -> None:
    """`python -m runner [overrides]`. With `resume=<run dir>`, the run's saved config is the primary
    config (the same override grammar as a new run) and the run continues in its own directory."""
    invocation = Invocation()
    argv = sys.argv[1:] if argv is None else argv
    target = _resume_target(argv)
    if target is None:
        invocation.run_hydra(str(conf_dir()), argv)
        return
    from runner import api
    from runner.config.compose import resume_composition

    if {"-m", "--multirun"} & set(argv):
        invocation.report(lambda: _refuse("resume", "a resumed run is one run; it cannot be part of a multirun (-m)"))
    invocation.resuming = invocation.report(lambda: api.locate_run(target))
    latest, run_dir = invocation.resuming
    saved = invocation.report(lambda: api.saved_config(latest))
    given = [a for a in argv if not a.startswith("resume=")]
    with resume_composition(saved, run_dir, given) as (config_dir, overrides):
        sys.argv = [sys.argv[0], *overrides]
        invocation.run_hydra(str(config_dir), overrides)


# At most this many compositions to find which value of a sweep Hydra refused (each takes ~0.1 s).
MOST_COMPOSITIONS = 64


def _compose_error(config_dir: str, argv: list[str]) -> None:
    """Composes the command line as runner.compose does, raising its ConfigError: a sweep's lists at their first
    values, then each other value of each list in turn (the others at their first). Returns when all of those
    compose, or fail otherwise: not a refusal runner can name."""
    from runner.config.compose import CommandLine, compose, parse_command_line, sweep_values

    read = parse_command_line(argv, "runner", other_options=True)
    lists = [values for o in read.overrides if "=" in o and not o.lstrip("+~").startswith("hydra") and (values := sweep_values(o))]
    first = [values[0] for values in lists]
    trials = [first, *([*first[:i], value, *first[i + 1 :]] for i, values in enumerate(lists) for value in values[1:])]
    for overrides in trials[:MOST_COMPOSITIONS]:
        command = CommandLine(overrides, search=read.search)
        try:
            compose(command.all_overrides, config_dir=read.config_dir or Path(config_dir), config_name=read.config_name)
        except ConfigError:
            raise
        except Exception:  # noqa: BLE001 - Hydra's own report is shown instead
            return


def _resume_target(argv: list[str]) -> str | None:
    values = [a.split("=", 1)[1] for a in argv if a.startswith("resume=")]
    return values[-1] if values and values[-1] not in ("", "null") else None


def _refuse(key: str, message: str) -> None:
    raise ConfigError([Problem(key, message)])


def _check_overrides(overrides: list[str], cfg: DictConfig, runtime: DictConfig) -> None:
    from runner.config.compose import merged_overrides, model_file_problems

    problems = model_file_problems(dict(runtime.choices), [dict(source) for source in runtime.config_sources])
    problems += merged_overrides(list(overrides), cfg)
    if problems:
        raise ConfigError(problems)


def _sweep_job(cfg: DictConfig, run_dir: Path) -> float:
    """One job of a multirun: a failure is recorded in the job's directory and the sweep goes on.

    error.json holds `error`, the message; for an unexpected exception (a bug) also `traceback`.
    """
    import json
    import traceback

    from runner.api import sweep_job
    from runner.run.writer import write_hparams

    started = time.perf_counter()
    try:
        summary, how = sweep_job(cfg, run_dir)
    except KeyboardInterrupt as stop:  # the whole sweep stops here, not just this job
        job = HydraConfig.get().job.num
        number, headline = (stop.signal_number, stop.detail) if isinstance(stop, Interrupted) else (int(signal.SIGINT), "before the job trained")
        again = Interrupted(number, f"{headline} (job {job} of the sweep)",
                            hint="continue the sweep by running the same command again: finished jobs are reused, this one resumes")
        report_errors(lambda: _raise(again))
    except (ConfigError, RunError) as error:
        record = {"error": str(error)}
    except Exception as error:  # a bug in a job must not take the whole sweep down; the report shows it
        headline = f"{type(error).__name__}: {error}".splitlines()[0]  # one line for the report; the traceback has the rest
        record = {"error": headline, "traceback": traceback.format_exc()}
    else:
        if how != "reused" and cfg.trainer.tensorboard:
            write_hparams(run_dir, list(HydraConfig.get().overrides.task), summary)
        _job_record(run_dir, {"status": "ok", "how": how, "seconds": time.perf_counter() - started})
        return summary["val_loss"]
    run_dir.mkdir(parents=True, exist_ok=True)
    RunDir(run_dir).error.write_text(json.dumps(record), encoding="utf-8")
    _job_record(run_dir, {"status": "failed", "how": "failed", "seconds": time.perf_counter() - started, "error": record["error"]})
    return float("inf")  # a sweeper that minimizes the return value ranks it last


def _remove_refused_sweep() -> None:
    """A sweep whose jobs Hydra refused to compose (it checks them all before the first runs) leaves no directory
    holding only its multirun.yaml and progress state."""
    from runner.sweep.progress import STATE, created

    while created:
        _remove_if_unused(created.pop(), "multirun.yaml", STATE)


def _remove_if_unused(run_dir: Path, *names: str) -> None:
    """Removes a run directory holding only what Hydra wrote before the task (.hydra/ and the job's log, or a sweep's
    `names`), and the parents left empty by that, up to the working directory: a run refused before it started leaves
    no litter."""
    import shutil

    here = Path.cwd().resolve()
    if run_dir.resolve() == here or not run_dir.is_dir() or any(path.name not in (".hydra", *names) for path in run_dir.iterdir()):
        return  # hydra.run.dir=. is the user's own directory, emptied or not
    shutil.rmtree(run_dir)
    parent = run_dir.resolve().parent
    while here in parent.parents and not any(parent.iterdir()):  # runs/<date>/ when this was its only run
        parent.rmdir()
        parent = parent.parent


def _raise(error: BaseException) -> None:
    raise error


def _job_record(run_dir: Path, record: dict) -> None:
    """job.json: how this run of the sweep ended the job (what the sweep's progress and report read)."""
    from runner.run.directory import write_json

    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(RunDir(run_dir).job, record)


def job_threads(requested: int, hydra_cfg) -> int:
    """Returns torch threads for this job: `requested` if set, else the cores shared among parallel joblib jobs."""
    if requested > 0:
        return requested
    launcher = hydra_cfg.launcher
    if hydra_cfg.mode == RunMode.MULTIRUN and "joblib" in str(launcher.get("_target_", "")):
        n_jobs = launcher.get("n_jobs", -1)
        cores = os.cpu_count() or 1
        parallel = cores if n_jobs in (-1, None) else max(1, min(int(n_jobs), cores))
        return max(1, cores // parallel)
    return 0
