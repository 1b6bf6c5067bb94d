"""Optuna search with pruning (`+search=lr_init`): what the sweeper plugin and the jobs share.

The sweeper (hydra_plugins/runner_optuna) asks Optuna for trials, launches them as Hydra jobs
and tells Optuna how each ended. A job learns its trial from environment variables the sweeper
sets (`hydra.job.env_set`), so it works under any launcher that keeps the study's storage
reachable. At every evaluation the job reports its validation loss to the trial and stops, as
`pruned`, when the study's pruner says so (runner.training.pruning is the job's side). The study lives in SQLite storage in the sweep
directory unless `hydra.sweeper.storage` says otherwise, so `optuna-dashboard <storage>` opens it.
"""

from __future__ import annotations

import math
from typing import Any

from runner.errors import ConfigError, Problem

SAMPLERS = ("tpe", "random")


def make_sampler(cfg: dict[str, Any]) -> Any:
    """`{name: tpe | random, seed: N}` -> an Optuna sampler."""
    import optuna

    name, seed = cfg.get("name", "tpe"), cfg.get("seed")
    if name not in SAMPLERS:
        raise ConfigError([Problem("hydra.sweeper.sampler.name", f"expected one of {', '.join(SAMPLERS)}, got {name!r}")])
    return optuna.samplers.TPESampler(seed=seed) if name == "tpe" else optuna.samplers.RandomSampler(seed=seed)


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
