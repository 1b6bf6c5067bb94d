"""What a run changes in its process, undone after it: RNG states, torch threads, deterministic algorithms."""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch


@contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """Turns torch's deterministic algorithms on for the run and restores the caller's setting.

    CUBLAS_WORKSPACE_CONFIG is left alone: torch gives each cuBLAS handle and stream its own workspace, which
    cuBLAS documents as enough for reproducible results, and torch no longer asks for the variable
    (pytorch/pytorch#161749). Setting it to ":4096:8", as older advice says, halved training steps/s on an
    H200 for the plain loop and the runner alike (bench figure 1, docs/benchmarks.md).
    """
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(enabled)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn_only)


@contextmanager
def own_rng(device: torch.device) -> Iterator[None]:
    """Runs with the caller's torch, Python and NumPy RNG states saved, and restores them after.

    Inside, the run seeds the global torch RNG (dropout draws from it) or restores a checkpoint's
    states, which covers every CUDA device once CUDA is in use.
    """
    cuda = device.type == "cuda" or (torch.cuda.is_available() and torch.cuda.is_initialized())
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda else []):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Runs with `count` torch threads (0: leave as is), then restores the caller's setting.

    It must cover init as well as training: some kernels (the QR behind orthogonal init, matmul
    reductions) give other bits with another thread count.
    """
    previous = torch.get_num_threads()
    if count > 0:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
