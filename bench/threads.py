"""Figure 18: the default torch threads (trainer.threads=0) against torch's own default, quiet and beside a busy process."""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from typing import Iterator

import torch

from bench.common import Row, alternate
from bench.figures import _prepared, _steps_per_second

MODELS = {
    "digits MLP (17k params, batch 64)": ["trainer.max_steps=300"],
    "model=cnn (6k params, batch 64)": ["model=cnn", "trainer.max_steps=60"],
}


@contextmanager
def busy_neighbour() -> Iterator[None]:
    """A CPU-bound process on one core for the duration: a sweep's other job, or another user's."""
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        process.kill()
        process.wait()


def default_threads(repeats: int, smoke: bool) -> list[Row]:
    """18. steps/s with the default threads (1 for a small model) over torch's default (one per core), quiet and beside a busy process."""
    rows = []
    cores = torch.get_num_threads()
    for size, overrides in MODELS.items():
        base = _prepared([*overrides, *(["trainer.max_steps=20"] if smoke else [])])
        chosen = base.plan.threads or cores

        def ours() -> float:
            return _steps_per_second(base, {}, chosen)

        def torch_default() -> float:
            return _steps_per_second(base, {}, cores)

        quiet = alternate(ours, torch_default, repeats)
        with busy_neighbour():
            busy = alternate(ours, torch_default, repeats)
        note = f"{chosen} thread(s) against {cores}"
        rows.append(Row("18. steps/s, default threads / torch's default, quiet machine", size, quiet[0] / quiet[1], ">= 0.9", note))
        rows.append(Row("18. steps/s, default threads / torch's default, a busy process beside", size, busy[0] / busy[1], ">= 1.5", note))
        rows.append(Row("18. steps/s, default threads: beside a busy process / quiet", size, busy[0] / quiet[0], ">= 0.7",
                        "what the default keeps of its speed"))
    return rows
