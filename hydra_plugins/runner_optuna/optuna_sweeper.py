"""`hydra/sweeper=optuna`: a thin Hydra sweeper over Optuna's ask-and-tell, with pruning.

hydra-optuna-sweeper 1.3 pins optuna 2.10 (2021) and cannot prune; this replaces it under the same
config name. Each batch of `n_jobs` trials is asked of the study, launched as Hydra jobs (by any
launcher), and told how each ended: its return value (the validation loss), PRUNED when the job
stopped on the pruner's word, FAIL when it failed. The study is kept in `storage` (default: SQLite
in the sweep directory), so running the same command into the same `hydra.sweep.dir` continues
it: finished trials count toward `n_trials`, and trials left running by a crash are marked failed.
"""

# No `from __future__ import annotations`: Hydra imports plugin modules without registering them in
# sys.modules, where dataclasses cannot resolve string annotations.
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("runner")


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.runner_optuna.optuna_sweeper.OptunaSweeper"
    study_name: Optional[str] = None  # default: the sweep directory's name
    storage: Optional[str] = None  # default: sqlite:///<sweep dir>/optuna.db
    n_trials: int = 20
    n_jobs: int = 1  # trials launched together (the launcher decides whether they run in parallel)
    sampler: Dict[str, Any] = field(default_factory=lambda: {"name": "tpe", "seed": None})
    # Optuna's step is the index of the job's evaluation (0, 1, ...); n_warmup_steps: 1 never prunes at the first.
    pruner: Dict[str, Any] = field(default_factory=lambda: {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 1})
    params: Dict[str, str] = field(default_factory=dict)  # key: choice(...) | interval(...) | range(...)
    # What the search optimizes and the pruner watches: val_loss, train_loss or val_<metric> of the jobs' `metrics:`.
    objective: str = "val_loss"
    direction: Optional[str] = None  # minimize | maximize; null: the objective's own (max for accuracy and top5)


ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="runner")


class OptunaSweeper(Sweeper):
    """Optimizes the jobs' `objective` (summary.json's value) over `params` and the command line's sweeps."""

    def __init__(self, study_name: Optional[str], storage: Optional[str], n_trials: int, n_jobs: int,
                 sampler: Dict[str, Any], pruner: Dict[str, Any], params: Dict[str, str], objective: str = "val_loss",
                 direction: Optional[str] = None):
        self.study_name, self.storage, self.n_trials, self.n_jobs = study_name, storage, n_trials, max(1, n_jobs)
        self.objective, self.direction = objective, direction
        self.sampler_cfg, self.pruner_cfg = _plain(sampler), _plain(pruner)
        self.params = {str(k): str(v) for k, v in (_plain(params) or {}).items()}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context, task_function=task_function, config=config)
        self.sweep_dir = Path(config.hydra.sweep.dir)

    def sweep(self, arguments: List[str]) -> None:
        import optuna
        from optuna.trial import TrialState

        from runner.errors import report_errors
        from runner.sweep.search import make_sampler
        from runner.training.pruning import job_environment

        # Every setting is checked before any trial: a bad one exits 2 with its key, as a bad config does.
        space, fixed, sampler, pruner = report_errors(lambda: self._settings(arguments))
        direction = report_errors(self._direction)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        storage = self.storage or f"sqlite:///{self.sweep_dir.resolve() / 'optuna.db'}"
        name = self.study_name or self.sweep_dir.name
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner, direction=direction, load_if_exists=True)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)  # left running by a crash
        done = len(study.get_trials(deepcopy=False))
        if done and self.sampler_cfg.get("seed") is not None:
            # A seeded sampler made anew would draw the first trials' parameters again: it goes on from a seed of its own.
            study.sampler = make_sampler({**self.sampler_cfg, "seed": int(self.sampler_cfg["seed"]) + done})
        log.info("optuna: study %r in %s: %d trials done, %d to go (%s %s)", name, storage, done, max(0, self.n_trials - done), direction,
                 self.objective)
        while done < self.n_trials:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - done))]
            batch = [[*fixed.values(), *(f"{key}={_text(value)}" for key, value in trial.params.items()),
                      *job_environment(storage, name, trial._trial_id, self.pruner_cfg, self.objective)]  # the id the job's Trial needs
                     for trial in trials]
            self.validate_batch_is_legal(batch)
            returns = self.launcher.launch(batch, initial_job_idx=trials[0].number)
            for trial, job in zip(trials, returns):
                study.tell(trial, **_outcome(job, self.objective), skip_if_finished=True)
            done += len(trials)
        _write_results(study, self.sweep_dir, self.objective)

    def _direction(self) -> str:
        """The study's direction; the objective checked against what the jobs log, before any trial."""
        from runner.errors import ConfigError, Problem, Problems, suggest
        from runner.registry.tables import METRICS
        from runner.spec.trainer import parse_metrics

        metrics = parse_metrics(_plain(self.config.get("metrics")), str(self.config.data.task), Problems())
        logged = {"val_loss": "min", "train_loss": "min", **{f"val_{m}": METRICS[m].mode for m in metrics}}
        if self.objective not in logged:
            close = suggest(str(self.objective), logged) or suggest(f"val_{self.objective}", logged)  # `accuracy` for val_accuracy
            raise ConfigError([Problem("hydra.sweeper.objective", f"{self.objective!r} is not logged by these jobs; they log: {', '.join(logged)} "
                                                                  f"(a metric is logged when `metrics:` names it);{close}".rstrip(";"))])
        if self.direction not in (None, "minimize", "maximize"):
            raise ConfigError([Problem("hydra.sweeper.direction", f"expected minimize, maximize or null (the objective's own), got {self.direction!r}")])
        return self.direction or ("minimize" if logged[self.objective] == "min" else "maximize")

    def _settings(self, arguments: List[str]) -> Tuple[Dict[str, Any], Dict[str, str], Any, Any]:
        """The search space (sweep overrides), the fixed overrides, the sampler and the pruner."""
        from runner.sweep.search import distribution, make_sampler
        from runner.training.pruning import make_pruner

        parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        space: Dict[str, Any] = {}
        fixed: Dict[str, str] = {}
        for override in parsed:  # the command line comes last: it wins over `params`
            key = override.get_key_element()
            if override.is_sweep_override():
                space[key] = distribution(key, override.value())
                fixed.pop(key, None)
            else:
                fixed[key] = override.input_line
                space.pop(key, None)
        return space, fixed, make_sampler(self.sampler_cfg), make_pruner(self.pruner_cfg)


def _outcome(job: Any, objective: str) -> Dict[str, Any]:
    """How a job ended, for Optuna: its summary's objective, or PRUNED (summary.json says so), or FAIL."""
    from optuna.trial import TrialState

    try:
        job.return_value
    except Exception:  # noqa: BLE001 - the job raised: Hydra re-raises on access
        return {"state": TrialState.FAIL}
    run_dir = Path(job.hydra_cfg.hydra.runtime.output_dir) if job.hydra_cfg is not None else None
    summary_file = run_dir / "summary.json" if run_dir is not None else None
    summary = json.loads(summary_file.read_text()) if summary_file is not None and summary_file.is_file() else {}
    if summary.get("pruned"):
        return {"state": TrialState.PRUNED}
    value = summary.get(objective)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return {"values": float(value)}
    return {"state": TrialState.FAIL}


def _write_results(study: Any, sweep_dir: Path, objective: str) -> None:
    """optimization_results.yaml: the objective, the best trial's parameters and value (as hydra-optuna-sweeper wrote)."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    counts = {state.name.lower(): len(study.get_trials(deepcopy=False, states=(state,))) for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    results: Dict[str, Any] = {"name": "optuna", "objective": objective, "direction": study.direction.name.lower(), "trials": counts}
    if complete:
        results.update(best_params=dict(study.best_params), best_value=study.best_value, best_trial=study.best_trial.number)
    OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
