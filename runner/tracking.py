"""`+tracker=mlflow`: a run's parameters, metrics and files also in MLflow.

One MLflow run per run directory (a sweep's job included; a sweep is one experiment). The
parameters are the resolved config, flattened to dotted keys. The metrics are the metrics.jsonl
stream: the writer thread (runner.observe) hands each batch of records to `log`, so the training
thread never waits on MLflow. At the end, summary.json, tensors.md and the plots are logged as
artifacts and the run is marked finished (or failed). tracker.json in the run directory keeps the
MLflow run's id, so a resumed run goes on in the same MLflow run.

Only MlflowClient is used (no fluent API, no global active run), so the writer thread may call it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import yaml

from runner.errors import RunError
from runner.rundir import RunDirWriteError, write_json

log = logging.getLogger("runner")

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter's value
MAX_METRICS_PER_BATCH = 1000  # MLflow's limit on one log_batch
ARTIFACTS = ("summary.json", "tensors.md", "loss.png", "grad_norms.png", "activations.png")
SKIPPED_KEYS = ("kind", "step", "epoch")


def flatten(node: Any, prefix: str = "") -> dict[str, str]:
    """The config as MLflow parameters: dotted keys, values as text (lists as YAML flow)."""
    if isinstance(node, dict) and node:
        flat: dict[str, str] = {}
        for key, value in node.items():
            flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    text = yaml.safe_dump(node, default_flow_style=True, width=1 << 30).strip().removesuffix("...").strip() \
        if isinstance(node, (list, dict)) else str(node)
    return {prefix: text[:MAX_PARAM_LENGTH]}


class MlflowTracker:
    """One MLflow run, opened for a run directory."""

    def __init__(self, spec: Any, config: dict, run_dir: Path, resumed: bool):
        from mlflow import MlflowClient

        self.client, self.run_dir, self.failed = MlflowClient(tracking_uri=spec.uri), run_dir, False
        saved = run_dir / "tracker.json"
        previous = json.loads(saved.read_text(encoding="utf-8")) if resumed and saved.is_file() else None
        if previous is not None and previous.get("uri") == spec.uri:
            self.run_id = previous["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        name = spec.experiment or "runner"
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment is not None else self.client.create_experiment(name)
        run = self.client.create_run(experiment_id, run_name=_run_name(run_dir), tags={"runner.run_dir": str(run_dir.resolve())})
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        params = [Param(key, value) for key, value in flatten(config).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])
        write_json(saved, {"uri": spec.uri, "experiment_id": experiment_id, "run_id": self.run_id})

    def log(self, records: list[dict[str, Any]]) -> None:
        """Logs the numbers of metrics.jsonl records (train and eval) at their steps. Called by the writer thread.

        A tracking failure does not stop training: it is logged once and tracking stops.
        """
        if self.failed:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, record["step"]) for record in records if record.get("kind") in ("train", "eval")
                   for key, value in record.items()
                   if key not in SKIPPED_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool)]
        try:
            for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
                self.client.log_batch(self.run_id, metrics=metrics[start : start + MAX_METRICS_PER_BATCH], synchronous=True)
        except Exception as error:  # noqa: BLE001 - the run directory has every record; MLflow is a copy
            self.failed = True
            log.warning("MLflow tracking stopped (the run goes on; metrics.jsonl has every record): %s", error)

    def finish(self, status: str = "FINISHED") -> None:
        """Logs the run's files as artifacts and marks the MLflow run FINISHED (or FAILED)."""
        try:
            if status == "FINISHED":
                for name in ARTIFACTS:
                    if (self.run_dir / name).is_file():
                        self.client.log_artifact(self.run_id, str(self.run_dir / name))
            self.client.set_terminated(self.run_id, status=status)
        except Exception as error:  # noqa: BLE001 - as in `log`
            log.warning("MLflow: could not finish run %s: %s", self.run_id, error)


def _run_name(run_dir: Path) -> str:
    """The job's overrides (Hydra's .hydra/overrides.yaml), else the run directory's name."""
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        listed = yaml.safe_load(overrides.read_text(encoding="utf-8")) or []
        if listed:
            return " ".join(str(o) for o in listed)
    return run_dir.name


def start(spec: Any, config: dict, run_dir: Path, resumed: bool) -> MlflowTracker | None:
    """Opens the configured tracker (None when the config names none); raises RunError, before any
    training, when MLflow cannot open the run."""
    if spec is None:
        return None
    try:
        return MlflowTracker(spec, config, run_dir, resumed)
    except RunDirWriteError:
        raise
    except Exception as error:  # noqa: BLE001 - whatever the store raised, said in one line
        raise RunError(f"tracker: MLflow at {spec.uri} could not open the run: {str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
