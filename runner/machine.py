"""Machine checks: is what the config asks for here? (The device, torchrun's environment, the data.)

Separate from config validity (spec.py, plan.py): `train` and `resume` ask both questions, `load`
only the first, so a run trained on a GPU loads on a laptop and needs no training data to do so.
"""

from __future__ import annotations

import os

from runner.data import Dataset, load_data
from runner.errors import ConfigError, Problems
from runner.placement import available_devices
from runner.spec import RunSpec, check_device_name


def check_machine(spec: RunSpec, problems: Problems) -> Dataset | None:
    """Adds a problem for each thing this machine lacks; returns the loaded data when it could be read."""
    check_device(spec.trainer.device, "trainer.device", problems)
    if spec.trainer.strategy == "ddp" and "WORLD_SIZE" not in os.environ:
        problems.add("trainer.strategy", "ddp needs torchrun: torchrun --nproc_per_node=N -m runner trainer.strategy=ddp")
    if any(p.key.startswith("data") for p in problems.items):
        return None  # the data section is wrong already: reading a file would only add noise
    try:
        return load_data(spec.data)
    except ConfigError as error:
        problems.items.extend(error.problems)
        return None


def check_device(name: str, key: str, problems: Problems) -> None:
    """Adds a problem unless `name` is `auto` or a device this machine has."""
    if not check_device_name(name, key, problems) or name == "auto":
        return
    if name not in available_devices():
        problems.add(key, f"device {name!r} is not available here; available: {', '.join(available_devices())} (or auto)")
