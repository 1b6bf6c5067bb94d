"""A plugin for tests/cli/test_plugins.py: one layer type, one init function and two callbacks (PlugRows
serves the DDP test in tests/cli/test_sweeps.py).

The tests install it into a temporary directory with a dist-info of its own (entry points in the
groups `runner.layers`, `runner.inits` and `runner.callbacks`), or only put it on the path, uninstalled. On import it
appends a line to the file named by RUNNER_TEST_PLUGIN_MARKER, when that is set, so a test can
tell whether a process imported it.
"""

from __future__ import annotations

import os

import torch
from torch import nn

import runner

if os.environ.get("RUNNER_TEST_PLUGIN_MARKER"):
    with open(os.environ["RUNNER_TEST_PLUGIN_MARKER"], "a", encoding="utf-8") as marker:
        marker.write(f"imported by pid {os.getpid()}\n")


class PlugScale(nn.Module):
    """y = x * weight + bias: one weight and one bias per feature."""

    def __init__(self, num_features: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * self.weight
        return y if self.bias is None else y + self.bias


def plug_constant_(tensor: torch.Tensor, value: float = 0.375) -> torch.Tensor:
    """Fills the tensor with `value`."""
    with torch.no_grad():
        return tensor.fill_(value)


class PlugEvals(runner.Callback):
    """Counts evaluations (across resumes) and adds the count to each eval record as `plug_<tag>`."""

    def __init__(self, tag: str = "evals"):
        self.tag, self.count = tag, 0

    def on_eval(self, loop, record):
        self.count += 1
        record[f"plug_{self.tag}"] = self.count

    def state_dict(self):
        return {"count": torch.tensor(self.count)}

    def load_state_dict(self, state):
        self.count = int(state["count"]) if "count" in state else 0


class PlugRows(runner.Callback):
    """Writes the input rows this process's model trained on to <directory>/rows_rank<RANK>.npy at the
    end (a forward pre-hook on the model, training passes only), and the rows of the batches its loader
    served to served_rank<RANK>.npy: what each DDP rank trained on, and what it read."""

    def __init__(self, directory: str):
        self.directory, self.rows, self.served = directory, [], []

    def on_step_start(self, loop, step, batches):
        self.served += [x.detach().cpu().numpy().copy() for x, _ in batches]
        return batches

    def on_train_start(self, loop):
        def record(module, args):
            if module.training:
                self.rows.append(args[0].detach().cpu().numpy().copy())

        loop.model.register_forward_pre_hook(record)

    def on_train_end(self, loop, step):
        import numpy as np

        rank = os.environ.get("RANK", "0")
        np.save(os.path.join(self.directory, f"rows_rank{rank}.npy"), np.concatenate(self.rows))
        np.save(os.path.join(self.directory, f"served_rank{rank}.npy"), np.concatenate(self.served))


NOT_CALLABLE = 42  # a broken `runner.inits` entry point names this
