"""A job's side of an Optuna search (`+search=...`): its trial, read from the environment the sweeper
set, gets each evaluation's validation loss, and the study's pruner may stop the run.

The sweeper (hydra_plugins/runner_optuna, with runner.sweep.search) launches each trial as a Hydra job
and passes the trial in environment variables (`hydra.job.env_set`), so any launcher that keeps the
study's storage reachable works.
"""

from __future__ import annotations

import json
import os
from typing import Any

from runner.errors import ConfigError, Problem
from runner.training.callbacks import Callback, Loop

ENV_STORAGE, ENV_STUDY, ENV_TRIAL, ENV_PRUNER = "RUNNER_OPTUNA_STORAGE", "RUNNER_OPTUNA_STUDY", "RUNNER_OPTUNA_TRIAL", "RUNNER_OPTUNA_PRUNER"
ENV_OBJECTIVE = "RUNNER_OPTUNA_OBJECTIVE"
PRUNERS = ("median", "percentile", "successive_halving", "hyperband", "none")


def make_pruner(cfg: dict[str, Any]) -> Any:
    """`{name: median, n_startup_trials: 2, n_warmup_steps: 1, ...}` -> an Optuna pruner (its other keys are its arguments)."""
    import optuna

    args = {k: v for k, v in cfg.items() if k != "name"}
    name = cfg.get("name", "median")
    classes = {"median": optuna.pruners.MedianPruner, "percentile": optuna.pruners.PercentilePruner,
               "successive_halving": optuna.pruners.SuccessiveHalvingPruner, "hyperband": optuna.pruners.HyperbandPruner,
               "none": optuna.pruners.NopPruner}
    if name not in classes:
        raise ConfigError([Problem("hydra.sweeper.pruner.name", f"expected one of {', '.join(PRUNERS)}, got {name!r}")])
    try:
        return classes[name](**args)
    except TypeError as error:
        raise ConfigError([Problem("hydra.sweeper.pruner", f"{name}: {error}")]) from None

def job_environment(storage: str, study: str, trial_id: int, pruner: dict[str, Any], objective: str = "val_loss") -> list[str]:
    """The overrides that tell a job its trial (Hydra sets them as environment variables of the job)."""
    values = {ENV_STORAGE: storage, ENV_STUDY: study, ENV_TRIAL: str(trial_id), ENV_PRUNER: json.dumps(pruner, separators=(",", ":")),
              ENV_OBJECTIVE: objective}
    return [f"++hydra.job.env_set.{key}='{value}'" for key, value in values.items()]

class JobTrial:
    """The job's side of a trial: report each evaluation's value; say when the study's pruner stops it."""

    def __init__(self, storage: str, study_name: str, trial_id: int, pruner: dict[str, Any], objective: str = "val_loss"):
        import optuna

        self.objective = objective
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name=study_name, storage=storage, pruner=make_pruner(pruner))
        self.trial = optuna.trial.Trial(study, trial_id)

    @classmethod
    def from_environment(cls) -> JobTrial | None:
        """The trial the sweeper launched this job for, or None outside an Optuna search."""
        if ENV_TRIAL not in os.environ:
            return None
        return cls(os.environ[ENV_STORAGE], os.environ[ENV_STUDY], int(os.environ[ENV_TRIAL]), json.loads(os.environ[ENV_PRUNER]),
                   os.environ.get(ENV_OBJECTIVE, "val_loss"))

    def pruned(self, value: float, step: int) -> bool:
        """Reports the value at this step; returns whether the pruner stops the trial here."""
        self.trial.report(value, step)
        return self.trial.should_prune()


class Pruning(Callback):
    """Reports each evaluation's value of the search's objective (val_loss unless the sweeper says otherwise)
    to the job's Optuna trial; stops the run, as pruned, when the
    study's pruner says so. Optuna's step is the evaluation's index in this process (0, 1, ...):
    pruners compare trials at equal steps."""

    name = "pruning"

    def __init__(self, trial: JobTrial):
        self.trial, self.evaluations, self.pruned = trial, 0, False

    def on_eval(self, loop: Loop, record: dict[str, Any]) -> None:
        self.evaluations += 1
        objective = self.trial.objective
        if loop.stopped is None and self.trial.pruned(record[objective], self.evaluations - 1):
            self.pruned = True
            loop.stop(f"pruned by the Optuna search at evaluation {self.evaluations} ({objective} {record[objective]:.6g})")
