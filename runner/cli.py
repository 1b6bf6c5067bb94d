"""`python -m runner`: Hydra composes the config; plain functions do the work."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, TypeVar

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from runner.config import conf_dir
from runner.errors import ConfigError, RunError

T = TypeVar("T")


def report_errors(work: Callable[[], T]) -> T:
    """Runs `work`; a ConfigError exits 2 and a RunError exits 1, each with its message and no traceback."""
    try:
        return work()
    except (ConfigError, RunError) as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"runner: {error}", file=sys.stderr)
        sys.exit(error.exit_code)


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from runner.api import resume, train

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.get("resume"):
        # A resumed run continues in its own directory; other overrides change its saved config.
        overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("resume=")]
        run_dir = Path(cfg.resume)
        summary = report_errors(lambda: resume(run_dir, overrides))
    else:
        summary = report_errors(lambda: train(cfg, run_dir))
    print(f"run directory: {run_dir}")
    return summary.get("val_loss")
