"""The run directory's files: metrics.jsonl (started here, written by runner.observe), summary.json, environment.json, weights hashing."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from runner.errors import RunError

if TYPE_CHECKING:  # imported where used: the CLI reads file names before torch is needed
    import torch


def _file(name: str) -> property:
    """A RunDir property: the path of `name` in the run directory."""
    return property(lambda self: self.path / name, doc=f"The run directory's {name}.")


@dataclass(frozen=True)
class RunDir:
    """A run directory and the names of the files in it: the one place those names are spelled.

    Every module that reads or writes a run's file asks this object for its path, so the list of what
    a run writes (OUTPUTS, cleared before a rerun) and what a tracker uploads (ARTIFACTS) cannot drift.
    """

    path: Path

    CONFIG = "config.yaml"
    METRICS = "metrics.jsonl"
    SUMMARY = "summary.json"
    ERROR = "error.json"
    JOB = "job.json"
    ENVIRONMENT = "environment.json"
    TENSORS_MD = "tensors.md"
    TENSORS_JSON = "tensors.json"
    MODEL_MD = "model.md"
    TRACKER = "tracker.json"
    CHECKPOINTS = "checkpoints"
    LOSS_PLOT = "loss.png"
    GRAD_NORMS_PLOT = "grad_norms.png"
    ACTIVATIONS_PLOT = "activations.png"
    EVENTS = "events.out.tfevents.*"  # TensorBoard's own file names (a glob)

    # What a run writes: an earlier run's are removed before the same directory is trained again.
    OUTPUTS = (CHECKPOINTS, METRICS, SUMMARY, ERROR, JOB, ENVIRONMENT, CONFIG, TENSORS_MD, TENSORS_JSON, MODEL_MD,
               LOSS_PLOT, GRAD_NORMS_PLOT, ACTIVATIONS_PLOT, EVENTS)
    # What a tracker (MLflow) receives as the run's artifacts, when they exist.
    ARTIFACTS = (SUMMARY, TENSORS_MD, LOSS_PLOT, GRAD_NORMS_PLOT, ACTIVATIONS_PLOT)

    config = _file(CONFIG)
    metrics = _file(METRICS)
    summary = _file(SUMMARY)
    error = _file(ERROR)
    job = _file(JOB)
    environment = _file(ENVIRONMENT)
    tracker = _file(TRACKER)
    checkpoints = _file(CHECKPOINTS)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))


class RunDirWriteError(RunError):
    """A write into the run directory failed (read-only, disk full); `path` is the file or folder written."""

    def __init__(self, run_dir: Path, path: Path, reason: str):
        self.run_dir, self.path = Path(run_dir), Path(path)
        super().__init__(f"cannot write the run directory {run_dir}: {reason} ({path})")


@contextmanager
def writing(run_dir: Path, path: Path | None = None) -> Iterator[None]:
    """Turns an OSError from the writes inside into RunDirWriteError, so callers can tell it from any other OSError.

    Wrap writes only: an OSError from elsewhere (a gloo connection, a data file) is not the run directory's.
    `path` names the file when the error does not (a write to an open file raises one without a name).
    """
    try:
        yield
    except OSError as error:
        raise RunDirWriteError(run_dir, Path(error.filename or path or run_dir), error.strerror or str(error)) from error


def write_json(path: Path, data: Any) -> None:
    """Writes JSON atomically into path's folder (the run directory): a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with writing(path.parent):
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)


def start_metrics(path: Path, truncate_after_step: int | None = None) -> None:
    """Starts metrics.jsonl anew, or for a resumed run keeps what was logged up to its checkpoint
    (what came after is logged again)."""
    with writing(path.parent):
        kept: list[str] = []
        if truncate_after_step is not None and path.exists():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if (r := _parse(line)) is not None and r["step"] <= truncate_after_step]
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def on_initial_weights(record: dict) -> bool:
    """True for a train record of a step taken on the initial weights: step 1, or a step after only
    float16 steps skipped for overflow (`skipped_steps` counts the record's own step when it was skipped)."""
    skipped_before = record.get("skipped_steps", 0) - bool(record.get("step_skipped"))
    return record.get("step") == skipped_before + 1


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Returns the records of a metrics.jsonl file (a line torn by a killed process is skipped)."""
    return [r for line in Path(path).read_text(encoding="utf-8").splitlines() if (r := _parse(line)) is not None]


def _parse(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "step" in record else None


class RunLock:
    """An exclusive lock on a run directory, so two runs cannot write into one directory.

    flock is released by the kernel when the process dies, so a killed run leaves no stale lock.
    """

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        self.handle = None

    def __enter__(self) -> "RunLock":
        import fcntl

        with writing(self.path.parent):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "another process"
            self.handle.close()
            raise RunError(f"{self.path.parent}: another run (pid {holder}) is writing into this directory; choose another hydra.run.dir") from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(str(os.getpid()))
        self.handle.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        import fcntl

        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def tensors_sha256(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """Returns a SHA-256 over (name, dtype, shape, bytes) of the tensors, in name order."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(named, key=lambda item: item[0]):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weights_sha256(model: torch.nn.Module) -> str:
    """Returns the hash of the model's state_dict: equal hashes mean bit-identical weights."""
    return tensors_sha256(model.state_dict().items())


def environment(device: torch.device, run_dir: Path) -> dict[str, Any]:
    """Returns what a reader needs to reproduce the run: versions, platform, device, git commit, command."""
    import hydra
    import omegaconf
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "hydra": hydra.__version__,
        "omegaconf": omegaconf.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "git_commit": _git_commit(),
        # The resolved config.yaml in the run directory is a complete primary config on its own.
        "command": reproduce_command(run_dir),
    }


def reproduce_command(run_dir: Path) -> str:
    """Returns the command that reruns this run from its directory alone."""
    return f"python -m runner --config-path {shlex.quote(str(run_dir.resolve()))} --config-name config"


def _git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None
