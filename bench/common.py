"""Benchmark helpers: alternate A and B in one process, drop warm-up, report medians and ratios."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class Row:
    figure: str
    size: str
    ratio: float
    goal: str
    note: str = ""


def alternate(a: Callable[[], float], b: Callable[[], float], repeats: int, warmup: int = 1) -> tuple[float, float]:
    """Runs a, b, a, b, ... and returns the median of each one's figure, warm-up rounds dropped."""
    results_a, results_b = [], []
    for index in range(warmup + repeats):
        ra, rb = a(), b()
        if index >= warmup:
            results_a.append(ra)
            results_b.append(rb)
    return statistics.median(results_a), statistics.median(results_b)


def timed(fn: Callable[[], object]) -> float:
    """Returns fn's wall time in seconds (on CUDA, after its queued kernels have finished)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def machine() -> str:
    import os
    import platform

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def print_table(rows: list[Row]) -> str:
    lines = ["| figure | size | ratio | goal | note |", "|---|---|---|---|---|"]
    lines += [f"| {r.figure} | {r.size} | {r.ratio:.3f} | {r.goal} | {r.note} |" for r in rows]
    text = "\n".join(lines)
    print(text)
    return text
