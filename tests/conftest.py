"""Shared fixtures: compose configs through the real Hydra config tree, shrunk for speed."""

from __future__ import annotations

import compileall
import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import runner
from runner.config.schema import conf_dir

REPO = Path(__file__).resolve().parent.parent
QUIET = ["trainer.progress=off", "trainer.tensorboard=false", "trainer.plots=false"]


def pytest_configure(config):
    # The CLI tests start about 80 Python processes. Where PYTHONDONTWRITEBYTECODE is set (it is on this
    # project's machines), each would compile runner's modules (and its Hydra plugin) again, about 0.9 s a process: compile
    # them once, here, before any worker starts.
    if not hasattr(config, "workerinput"):
        for package in ("runner", "hydra_plugins"):
            compileall.compile_dir(REPO / package, quiet=1)


if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under pytest-xdist each worker has a core: one thread each, here and in the CLI processes it starts,
    # so that two workers don't fight over two cores (a thread count is part of no test's result).
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def config_names(group: str) -> list[str]:
    """Returns the option names of a config group, as shipped under conf/."""
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def model_choice(name: str) -> str:
    """Returns the override that trains model `name` on its data: its experiment preset where it has one."""
    return f"experiment={name}" if (conf_dir() / "experiment" / f"{name}.yaml").is_file() else f"model={name}"


@pytest.fixture
def compose():
    def _compose(*overrides: str):
        return runner.compose([*QUIET, *overrides])

    return _compose


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 120,
            process: bool = False) -> subprocess.CompletedProcess:
    """Runs `python -m runner ARGS` and returns its exit status and output (see `run_module`)."""
    return run_module("runner", *args, cwd=cwd, env=env, timeout=timeout, process=process)


def run_module(module: str, *args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 120,
               process: bool = False) -> subprocess.CompletedProcess:
    """Runs `python -m MODULE ARGS` (runner or one of its entry points) and returns its exit status and
    output as a CompletedProcess.

    By default in this process, as `python -m` would run it (see `in_process`): a new process would
    spend ~6 s importing torch and torch._dynamo before any work. `process=True` starts a real one,
    for what only a process shows: signals, plugins installed for it, what a fresh import loads.
    """
    if not process:
        return in_process(module, list(args), cwd or REPO, env or {})
    full_env = {**os.environ, **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd or REPO, env=full_env,
        capture_output=True, text=True, timeout=timeout,
    )


def torchrun(args: list[str], env: dict | None = None, timeout: int = 150) -> subprocess.CompletedProcess:
    """Runs `torchrun --standalone --nproc_per_node=2 -m runner ARGS`. On a hang the agent and both ranks are
    killed and the run tried once more, with a warning: here a rank has hung at random after training (three
    times in ~12 suite runs: rank 0 done, rank 1's main thread waiting on a lock, gloo's threads idle), which
    looks like pytorch/pytorch#75097 and is no result of the test's. torchrun starts each rank in a session of
    its own, so the ranks are found by a marker in their environment; they hold the output pipes, so nothing
    here waits on those without a limit."""
    import signal
    import uuid
    import warnings

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "runner", *args]
    marker = f"RUNNER_TEST_TORCHRUN={uuid.uuid4().hex}"
    env = {**os.environ, **(env or {}), "OMP_NUM_THREADS": "1", "RUNNER_TEST_TORCHRUN": marker.split("=", 1)[1]}
    env.pop("HYDRA_FULL_ERROR", None)
    for attempt in (1, 2):
        process = subprocess.Popen(command, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = process.communicate(timeout=timeout)
            return subprocess.CompletedProcess(command, process.returncode, out, err)
        except subprocess.TimeoutExpired:
            for pid in [process.pid, *_processes_with(marker)]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            out, err = process.communicate(timeout=30)
            if attempt == 2:
                raise AssertionError(f"torchrun hung twice; its output:\n{out}\n{err}") from None
            warnings.warn(f"torchrun hung after {timeout}s (output: {out[-300:]!r}); trying once more", stacklevel=2)
    raise AssertionError("unreachable")


def _processes_with(entry: str) -> list[int]:
    """The processes whose environment holds `entry` (NAME=value), read from /proc."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError):
            if entry.encode() in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
    return found


def in_process(module: str, args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """Runs the `main` of `python -m MODULE` with ARGS as sys.argv[1:], in `cwd` with `env` added to the
    environment, capturing stdout and stderr; what a process would leave behind is put back after:
    the arguments, directory, environment, Hydra's global state and the logging handlers Hydra adds.
    An exception that escapes is printed as the interpreter would print it, with exit status 1."""
    import contextlib
    import importlib
    import io
    import logging
    import traceback

    from hydra.core.global_hydra import GlobalHydra

    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger))]
    saved_logging = {logger: (logger.handlers[:], logger.level, logger.propagate) for logger in loggers}
    saved = sys.argv[:], os.getcwd(), dict(os.environ)
    out, err = io.StringIO(), io.StringIO()
    os.environ.update(env)
    os.environ.pop("HYDRA_FULL_ERROR", None)
    os.chdir(cwd)
    sys.argv = [module, *args]
    GlobalHydra.instance().clear()
    code: int | str | None = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                if module == "runner":
                    importlib.import_module("runner.cli").main()  # what runner/__main__.py calls
                else:
                    importlib.import_module(module).main(args)
            except SystemExit as leaving:
                code = leaving.code
                if isinstance(code, str):  # sys.exit("message"): printed, status 1
                    print(code, file=sys.stderr)
                    code = 1
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        GlobalHydra.instance().clear()
        sys.argv, cwd_before, environ = saved
        os.chdir(cwd_before)
        os.environ.clear()
        os.environ.update(environ)
        for logger in [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger))]:
            handlers, level, propagate = saved_logging.get(logger, ([], logging.NOTSET, True))
            for handler in logger.handlers:
                if handler not in handlers:
                    handler.close()
            logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate
    return subprocess.CompletedProcess([module, *args], 0 if code is None else code, out.getvalue(), err.getvalue())


# The test plugin (a layer type, an init function, callbacks), installed with `install` for processes that need it.
PLUGIN = REPO / "tests" / "cli" / "plugin_fixture" / "runner_test_plugin.py"


def install(site: Path, name: str, entry_points: str) -> None:
    """Installs the fixture plugin into `site` as distribution `name` 0.1 with these entry points."""
    site.mkdir(parents=True, exist_ok=True)
    (site / PLUGIN.name).write_text(PLUGIN.read_text())
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)


def env_with(path: Path, marker: Path) -> dict:
    """The environment of a subprocess with `path` importable and the plugin's import marker at `marker`."""
    return {"PYTHONPATH": os.pathsep.join([str(path), str(REPO)]), "RUNNER_TEST_PLUGIN_MARKER": str(marker)}


@pytest.fixture(scope="session")
def mlp_weights(tmp_path_factory):
    """A safetensors file of the default mlp's weights: what `experiment=finetune` starts from."""
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("weights") / "mlp.safetensors"
    save_file(runner.build(runner.compose(["trainer.progress=off"])).state_dict(), path)
    return path


def needs(option: str, weights: Path) -> list[str]:
    """The overrides a preset requires: the fine-tune preset names the weights to start from, the
    token-stream preset a directory of token files (written beside the weights)."""
    if option == "finetune":
        return [f"init.rules.0.path={weights}"]
    if option == "nanogpt_chars":
        return [f"data.root={token_files(weights.parent / 'tokens')}"]
    if option == "resnet18_cifar10":
        return [f"data.root={cifar_files(weights.parent / 'cifar10')}"]
    return []


def cifar_files(root: Path) -> Path:
    """A directory of CIFAR-10's binary version, 4 random images per file (once per root)."""
    import numpy as np

    if not root.is_dir():
        root.mkdir()
        rng = np.random.default_rng(0)
        for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
            write_cifar(root / name, rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 4))
    return root


def token_files(root: Path, vocab: int = 65) -> Path:
    """A directory with nanoGPT's layout, train.bin and val.bin of random uint16 ids (once per root)."""
    import numpy as np

    if not root.is_dir():
        root.mkdir()
        rng = np.random.default_rng(0)
        rng.integers(0, vocab, 3000).astype(np.uint16).tofile(root / "train.bin")
        rng.integers(0, vocab, 600).astype(np.uint16).tofile(root / "val.bin")
    return root


def resumes_bit_identically(cfg, tmp_path: Path, kept: int) -> dict:
    """Trains `cfg` into tmp_path/full, copies it to tmp_path/cut keeping only its first `kept` checkpoints
    (the run as killed after them), resumes the copy, and checks that it ends as the full run did: the same
    weights and the same metrics.jsonl. Returns the full run's summary."""
    import shutil

    from runner.run.directory import read_metrics

    full = runner.train(cfg, tmp_path / "full")
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    for late in sorted((tmp_path / "cut" / "checkpoints").iterdir())[kept:]:
        shutil.rmtree(late)
    (tmp_path / "cut" / "summary.json").unlink()
    resumed = runner.resume(tmp_path / "cut")
    assert resumed["weights_sha256"] == full["weights_sha256"]
    assert read_metrics(tmp_path / "cut" / "metrics.jsonl") == read_metrics(tmp_path / "full" / "metrics.jsonl")
    return full


def read_csv(path: Path) -> list[dict]:
    """The rows of a CSV file the sweep report wrote, as dicts of strings."""
    import csv

    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# A CLI job small enough for sweeps: 12 steps on one thread, no bar, no plots, no TensorBoard.
TINY = ["trainer.max_steps=12", "trainer.log_every=4", "trainer.threads=1", "trainer.progress=off", "trainer.tensorboard=false", "trainer.plots=false"]


class Payload:
    """A pickle that would create a directory if it were ever unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


class NaNBatchesAt(runner.Callback):
    """Makes optimizer step `step`'s inputs NaN, through the public callback interface."""

    def __init__(self, step: int):
        self.step = step

    def on_step_start(self, loop, step, batches):
        return tuple((x * float("nan"), y) for x, y in batches) if step == self.step else batches


def write_idx(path: Path, array, gz: bool = False) -> None:
    """Writes an IDX file of unsigned bytes, as LeCun's page specifies it: 0x0000, type 0x08, the number
    of dimensions, each size as a big-endian int32, then the bytes."""
    import gzip
    import struct

    raw = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape) + array.astype("uint8").tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def write_cifar(path: Path, images, *labels) -> None:
    """Writes CIFAR's binary layout: per image, its label byte(s), then 1024 red, 1024 green and 1024
    blue bytes, each plane row by row."""
    with open(path, "wb") as handle:
        for index, image in enumerate(images):
            handle.write(bytes(int(column[index]) for column in labels))
            for channel in range(3):
                for row in range(32):
                    handle.write(bytes(int(v) for v in image[channel][row]))


@pytest.fixture(scope="session")
def image_datasets(tmp_path_factory):
    """Small MNIST (gzipped train, plain test), CIFAR-10 and CIFAR-100 directories in their own formats:
    name -> (root, {"train": (images, labels), "test": (images, labels)}), images as (N, C, H, W) uint8."""
    import numpy as np

    rng = np.random.default_rng(0)
    made = {}
    root = tmp_path_factory.mktemp("mnist")
    mnist = {split: (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n)) for split, n in (("train", 40), ("test", 12))}
    write_idx(root / "train-images-idx3-ubyte.gz", mnist["train"][0], gz=True)
    write_idx(root / "train-labels-idx1-ubyte.gz", mnist["train"][1], gz=True)
    write_idx(root / "t10k-images-idx3-ubyte", mnist["test"][0])
    write_idx(root / "t10k-labels-idx1-ubyte", mnist["test"][1])
    made["mnist"] = (root, {split: (images[:, None], labels) for split, (images, labels) in mnist.items()})
    root = tmp_path_factory.mktemp("cifar10")
    batches = [(rng.integers(0, 256, (6, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 6)) for _ in range(6)]
    for name, (images, labels) in zip([f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"], batches):
        write_cifar(root / name, images, labels)
    made["cifar10"] = (root, {"train": tuple(np.concatenate(part) for part in zip(*batches[:5])), "test": batches[5]})
    root = tmp_path_factory.mktemp("cifar100")
    splits = {split: (rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 20, n), rng.integers(0, 100, n))
              for split, n in (("train", 10), ("test", 4))}
    for split, (images, coarse, fine) in splits.items():
        write_cifar(root / f"{split}.bin", images, coarse, fine)
    made["cifar100"] = (root, {split: (images, fine) for split, (images, coarse, fine) in splits.items()})
    root = tmp_path_factory.mktemp("image_folder")
    folder = {split: (rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), np.arange(n) % 3) for split, n in (("train", 9), ("val", 3))}
    for split, (images, labels) in folder.items():
        write_pngs(root / split, images, labels, ["cat", "dog", "emu"])
    made["image_folder"] = (root, {"train": folder["train"], "test": folder["val"]})
    return made


def write_pngs(folder: Path, images, labels, classes: list[str]) -> None:
    """Writes (N, C, H, W) uint8 images as folder/<class>/<index>.png with Pillow (RGB or L)."""
    from PIL import Image

    for index, (image, label) in enumerate(zip(images, labels)):
        (folder / classes[label]).mkdir(parents=True, exist_ok=True)
        pixels = image.transpose(1, 2, 0)
        Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(folder / classes[label] / f"{index:03d}.png")
