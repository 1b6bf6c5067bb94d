"""Optuna search with pruning (`+search=lr_init`): what the sweeper plugin and the jobs share.

The sweeper (hydra_plugins/runner_optuna) asks Optuna for trials, launches them as Hydra jobs
and tells Optuna how each ended. A job learns its trial from environment variables the sweeper
sets (`hydra.job.env_set`), so it works under any launcher that keeps the study's storage
reachable. At every evaluation the job reports its validation loss to the trial and stops, as
`pruned`, when the study's pruner says so. The study lives in SQLite storage in the sweep
directory unless `hydra.sweeper.storage` says otherwise, so `optuna-dashboard <storage>` opens it.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from runner.errors import ConfigError, Problem

ENV_STORAGE, ENV_STUDY, ENV_TRIAL, ENV_PRUNER = "RUNNER_OPTUNA_STORAGE", "RUNNER_OPTUNA_STUDY", "RUNNER_OPTUNA_TRIAL", "RUNNER_OPTUNA_PRUNER"
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "percentile", "successive_halving", "hyperband", "none")


def make_sampler(cfg: dict[str, Any]) -> Any:
    """`{name: tpe | random, seed: N}` -> an Optuna sampler."""
    import optuna

    name, seed = cfg.get("name", "tpe"), cfg.get("seed")
    if name not in SAMPLERS:
        raise ConfigError([Problem("hydra.sweeper.sampler.name", f"expected one of {', '.join(SAMPLERS)}, got {name!r}")])
    return optuna.samplers.TPESampler(seed=seed) if name == "tpe" else optuna.samplers.RandomSampler(seed=seed)


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


def distribution(key: str, sweep: Any) -> Any:
    """A sweep override's value (Hydra's grammar) as an Optuna distribution:
    `choice(a, b)` categorical; `interval(lo, hi)` float (`tag(log, interval(...))` log-scaled);
    `range(a, b, s)` int (or float) with that step, b excluded."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not isinstance(sweep, IntervalSweep) and sweep.tags:
        raise ConfigError([Problem(f"hydra.sweeper.params.{key}", f"tags ({', '.join(sorted(sweep.tags))}) are read on interval(...) only: "
                                                                  "tag(log, interval(lo, hi)) searches log-uniformly")])
    if isinstance(sweep, ChoiceSweep):
        return CategoricalDistribution(list(sweep.list))
    if isinstance(sweep, IntervalSweep):  # Hydra reads an interval's ends as floats: integers come from range(...)
        return FloatDistribution(float(sweep.start), float(sweep.end), log="log" in sweep.tags)
    if isinstance(sweep, RangeSweep):
        start, stop, step = sweep.start, sweep.stop, sweep.step
        count = math.ceil((stop - start) / step)  # Hydra's range: start, start + step, ... below stop
        if count < 1:
            raise ConfigError([Problem(f"hydra.sweeper.params.{key}", f"range({start}, {stop}, {step}) holds no value")])
        if all(isinstance(v, int) for v in (start, stop, step)):
            return IntDistribution(start, start + (count - 1) * step, step=step)
        # Rounded: 0 + 3 * 0.3 is 0.8999999999999999, which Optuna would cut back to 0.6.
        return FloatDistribution(float(start), round(start + (count - 1) * step, 12), step=float(step))
    raise ConfigError([Problem(f"hydra.sweeper.params.{key}", f"expected choice(...), interval(...) or range(...), got {sweep!r}")])


def job_environment(storage: str, study: str, trial_id: int, pruner: dict[str, Any]) -> list[str]:
    """The overrides that tell a job its trial (Hydra sets them as environment variables of the job)."""
    values = {ENV_STORAGE: storage, ENV_STUDY: study, ENV_TRIAL: str(trial_id), ENV_PRUNER: json.dumps(pruner, separators=(",", ":"))}
    return [f"++hydra.job.env_set.{key}='{value}'" for key, value in values.items()]


class JobTrial:
    """The job's side of a trial: report each evaluation's value; say when the study's pruner stops it."""

    def __init__(self, storage: str, study_name: str, trial_id: int, pruner: dict[str, Any]):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name=study_name, storage=storage, pruner=make_pruner(pruner))
        self.trial = optuna.trial.Trial(study, trial_id)

    @classmethod
    def from_environment(cls) -> JobTrial | None:
        """The trial the sweeper launched this job for, or None outside an Optuna search."""
        if ENV_TRIAL not in os.environ:
            return None
        return cls(os.environ[ENV_STORAGE], os.environ[ENV_STUDY], int(os.environ[ENV_TRIAL]), json.loads(os.environ[ENV_PRUNER]))

    def pruned(self, value: float, step: int) -> bool:
        """Reports the value at this step; returns whether the pruner stops the trial here."""
        self.trial.report(value, step)
        return self.trial.should_prune()
