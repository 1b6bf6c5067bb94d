"""Machine checks: is what the config asks for here? (The device, torchrun's environment, the data.)

Separate from config validity (runner.spec, plan.py): `train` and `resume` ask both questions, `load`
only the first, so a run trained on a GPU loads on a laptop and needs no training data to do so.
"""

from __future__ import annotations

import importlib.util
import os

from runner.data.sources import Dataset, load_data
from runner.errors import ConfigError, Problems
from runner.model.placement import available_devices, resolve_device
from runner.registry.tables import TRACKERS
from runner.spec import RunSpec
from runner.spec.trainer import DEVICE_FORM, check_device_name


def check_machine(spec: RunSpec, problems: Problems) -> Dataset | None:
    """Adds a problem for each thing this machine lacks; returns the loaded data when it could be read."""
    check_device(spec.trainer.device, "trainer.device", problems)
    check_autocast(spec, problems)
    if spec.data.loader.pin_memory and DEVICE_FORM.match(str(spec.trainer.device)) and resolve_device(spec.trainer.device).type != "cuda":
        where = "auto found no CUDA device here" if spec.trainer.device == "auto" else f"trainer.device is {spec.trainer.device}"
        problems.add("data.loader.pin_memory", f"page-locked batches speed copies to a CUDA device ({where}); remove it")
    if spec.tracker is not None and spec.tracker.name in TRACKERS and importlib.util.find_spec(TRACKERS[spec.tracker.name]) is None:
        problems.add("tracker", "MLflow is not installed here: pip install 'runner[mlflow]' (mlflow-skinny with SQLAlchemy and Alembic)")
    if spec.trainer.strategy == "ddp" and "WORLD_SIZE" not in os.environ:
        problems.add("trainer.strategy", "ddp needs torchrun: torchrun --nproc_per_node=N -m runner trainer.strategy=ddp")
    if any(p.key.startswith("data") for p in problems.items):
        return None  # the data section is wrong already: reading a file would only add noise
    try:
        return load_data(spec.data)
    except ConfigError as error:
        problems.items.extend(error.problems)
        return None


def check_autocast(spec: RunSpec, problems: Problems) -> None:
    """float16 autocast is for CUDA: its loss scaling exists for CUDA's float16 kernels, and on a CPU
    float16 is slower than float32 (bfloat16 is the CPU's autocast dtype)."""
    trainer = spec.trainer
    if trainer.autocast != "float16" or not DEVICE_FORM.match(str(trainer.device)):
        return
    if resolve_device(trainer.device).type == "cuda":
        return  # an absent cuda:N is check_device's problem
    where = "auto found no CUDA device here" if trainer.device == "auto" else f"trainer.device is {trainer.device}"
    problems.add("trainer.autocast", f"float16 autocast needs a CUDA device ({where}); use trainer.autocast=bfloat16 on the {'CPU' if trainer.device != 'mps' else 'MPS'}")


def check_device(name: str, key: str, problems: Problems) -> None:
    """Adds a problem unless `name` is `auto` or a device this machine has."""
    if not check_device_name(name, key, problems) or name == "auto":
        return
    if name not in available_devices():
        problems.add(key, f"device {name!r} is not available here; available: {', '.join(available_devices())} (or auto)")
