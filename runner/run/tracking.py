"""`+tracker=mlflow`: a run's parameters, metrics and files also in MLflow.

One MLflow run per run directory (a sweep's job included; a sweep is one experiment). The
parameters are the resolved config, flattened to dotted keys, logged before training starts. The
metrics are the metrics.jsonl stream: the writer thread (runner.observe) hands each batch of
records to `log`, which passes them down a pipe to a logging process of its own
(runner/run/mlflow_child.py): MLflow's SQLAlchemy work would otherwise take the training process's
GIL (bench figure 14). At the end the process drains, summary.json, tensors.md and the plots are
logged as artifacts, and the run is marked finished (or failed). tracker.json in the run
directory keeps the MLflow run's id, so a resumed run goes on in the same MLflow run.
"""

from __future__ import annotations

import json
import logging
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from runner.errors import RunError
from runner.run.directory import RunDir, RunDirWriteError, write_json

log = logging.getLogger("runner")

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter's value
ARTIFACTS = RunDir.ARTIFACTS
SKIPPED_KEYS = ("kind", "step", "epoch")
OPEN_ATTEMPTS = 3


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
        saved = RunDir(run_dir).tracker
        previous = json.loads(saved.read_text(encoding="utf-8")) if resumed and saved.is_file() else None
        if previous is not None and previous.get("uri") == spec.uri:
            self.run_id = previous["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self._create(spec, config, run_dir)
        self.errors = tempfile.TemporaryFile()  # the process's stderr: a file, so that it never blocks on a full pipe
        # A session of its own: Ctrl-C stops training, and this process still logs what it was given.
        self.child = subprocess.Popen(child_command(spec.uri, self.run_id), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                      stderr=self.errors, start_new_session=True)
        # The pipe is fed by a thread of its own: a slow store fills the pipe and blocks this thread, not the writer.
        self._lines: queue.SimpleQueue = queue.SimpleQueue()
        self._feeder = threading.Thread(target=self._feed, name="runner-mlflow-feeder", daemon=True)
        self._feeder.start()

    def _create(self, spec: Any, config: dict, run_dir: Path) -> str:
        name = spec.experiment or "runner"
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            try:
                experiment_id = self.client.create_experiment(name, artifact_location=artifact_root(spec.uri))
            except Exception:  # noqa: BLE001 - a parallel job of the sweep created it first
                experiment = self.client.get_experiment_by_name(name)
                if experiment is None:
                    raise
                experiment_id = experiment.experiment_id
        run = self.client.create_run(experiment_id, run_name=_run_name(run_dir), tags={"runner.run_dir": str(run_dir.resolve())})
        from mlflow.entities import Param

        params = [Param(key, value) for key, value in flatten(config).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(run.info.run_id, params=params[start : start + 100])
        write_json(RunDir(run_dir).tracker, {"uri": spec.uri, "experiment_id": experiment_id, "run_id": run.info.run_id})
        return run.info.run_id

    def log(self, records: list[dict[str, Any]]) -> None:
        """Passes the numbers of metrics.jsonl records (train and eval), at their steps, to the logging
        process. Called by the writer thread. A tracking failure does not stop training: it is said
        once, and tracking stops."""
        if self.failed:
            return
        now = int(time.time() * 1000)
        metrics = [[key, float(value), now, record["step"]] for record in records if record.get("kind") in ("train", "eval")
                   for key, value in record.items()
                   if key not in SKIPPED_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool)]
        self._lines.put((json.dumps(metrics) + "\n").encode())

    def _feed(self) -> None:
        """The feeder thread: lines down the pipe until `finish` puts None; a dead process is said once."""
        while (line := self._lines.get()) is not None:
            if self.failed:
                continue
            try:
                self.child.stdin.write(line)
                self.child.stdin.flush()
            except OSError:  # the logging process is gone: it says why on its stderr
                self.failed = True
                log.warning("MLflow tracking stopped (the run goes on; metrics.jsonl has every record): %s", self._child_error())

    def _child_error(self) -> str:
        """Closes the pipe, waits for the process to log what it holds; returns the last line it said."""
        try:
            self.child.stdin.close()
        except OSError:
            pass
        self.child.wait()
        self.errors.seek(0)
        said = self.errors.read().decode(errors="replace").strip().splitlines()
        self.errors.close()
        return said[-1] if said else f"the logging process exited {self.child.returncode}"

    def finish(self, status: str = "FINISHED") -> None:
        """Waits for the logging process to log what it was given, then logs the run's files as
        artifacts and marks the MLflow run FINISHED (or FAILED)."""
        self._lines.put(None)
        self._feeder.join()
        if not self.failed:
            error = self._child_error()
            if self.child.returncode != 0:
                log.warning("MLflow tracking stopped (the run goes on; metrics.jsonl has every record): %s", error)
        try:
            if status == "FINISHED":
                for name in ARTIFACTS:
                    if (self.run_dir / name).is_file():
                        self.client.log_artifact(self.run_id, str(self.run_dir / name))
            self.client.set_terminated(self.run_id, status=status)
        except Exception as error:  # noqa: BLE001 - as in `log`
            log.warning("MLflow: could not finish run %s: %s", self.run_id, error)


def artifact_root(uri: str) -> str | None:
    """Where a SQLite store's artifacts go: `mlruns/` beside the database file (MLflow's own default is
    `./mlruns` in whatever the working directory is). None for a server, which decides itself."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns").as_uri()


def child_command(uri: str, run_id: str) -> list[str]:
    """The logging process: runner/run/mlflow_child.py's code, which imports MLflow, not runner or torch.

    Given with -c, not as a script path: a script's folder comes first on sys.path, and runner/'s
    modules (inspect.py) would shadow the standard library's.
    """
    return [sys.executable, "-c", Path(__file__).with_name("mlflow_child.py").read_text(encoding="utf-8"), uri, run_id]


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
    for attempt in range(OPEN_ATTEMPTS):
        try:
            return MlflowTracker(spec, config, run_dir, resumed)
        except RunDirWriteError:
            raise
        except Exception as error:  # noqa: BLE001 - whatever the store raised, said in one line
            if attempt + 1 < OPEN_ATTEMPTS:  # parallel jobs creating one SQLite store or experiment: once more
                time.sleep(0.5 * (attempt + 1))
                continue
            raise RunError(f"tracker: MLflow at {spec.uri} could not open the run: {str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    return None
