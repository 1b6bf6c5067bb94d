"""TensorBoard histograms of the watched weights and gradients, every `trainer.hist_every` steps."""

from __future__ import annotations

import torch

from runner.run.writer import histogram_summaries
from runner.training.callbacks import Callback, Loop


class Histograms(Callback):
    """On its own interval (a step need not be logged to get histograms), skipped float16 steps excepted.
    Summarized on the device: only min, max, sums and bin counts reach the host."""

    name = "histograms"

    def __init__(self, every: int, names: list[str], tensors: list[torch.Tensor]):
        self.every, self.names, self.tensors = every, names, tensors

    def on_step_end(self, loop: Loop, step: int) -> None:
        if step % self.every or loop.precision.last_skipped:
            return
        loop.losses.check_local(step)  # NaN weights would fail in TensorBoard, not name their step
        tags, tensors = [], []
        for name, param in zip(self.names, self.tensors):
            if param.numel() == 0:
                continue
            tags.append(f"weights/{name}")
            tensors.append(param)
            if param.grad is not None:
                tags.append(f"grads/{name}")
                tensors.append(param.grad)
        if tensors:
            loop.writer.histograms(step, tags, [t.numel() for t in tensors], histogram_summaries(tensors).cpu())
