"""Figure 1: the runner's training steps/s over a hand-written PyTorch loop doing the identical work.

Both start from the same initialized weights, see the same batches in the same order and use the
same optimizer; the final weights must be bitwise equal, which proves they did the same work.

The first rows run the runner with its default observability (TensorBoard, gradient and activation
statistics every 50 steps, histograms every 100), each side as the first run of a fresh process,
as a user's run is. The reference rows turn every statistic and writer off and alternate in one
process.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import runner
from bench.common import Row, alternate
from runner.prepare.plan import validate
from runner.prepare.prepare import prepare
from runner.run.directory import tensors_sha256
from runner.training.environment import torch_threads
from runner.training.run import run_training

REPO = Path(__file__).resolve().parent.parent
# Figure 1's fresh-process runs: the default experiment as shipped (20 epochs), and the 2M model long enough to time.
FRESH = {"digits MLP (17k params, batch 64)": [], "2M-param MLP (batch 256)": ["trainer.epochs=6"]}
OFF = ["trainer.log_every=1000000", "trainer.tensorboard=false", "trainer.grad_stats=false", "trainer.activation_stats=false", "trainer.plots=false"]
SIZES = {
    "digits MLP (17k params, batch 64)": ["trainer.epochs=3"],
    "2M-param MLP (batch 256)": [
        "data=synthetic", "data.num_features=512", "data.num_samples=4096", "data.num_outputs=10",
        "model.layers.fc1.out_features=1024", "model.layers.fc2.in_features=1024",
        "model.layers.fc2.out_features=1024", "model.layers.head.in_features=1024",
        "trainer.batch_size=256", "trainer.epochs=1",
    ],
}


def hand_written(model: torch.nn.Module, data, epochs: int, batch_size: int, lr: float, seed: int,
                 max_steps: int | None = None) -> tuple[float, int]:
    """A plain PyTorch loop; returns (training seconds, steps)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    x, y = data.train_x, data.train_y  # already on the model's device (see measure)
    steps, seconds = 0, 0.0
    for epoch in range(epochs if max_steps is None else max_steps):
        began = time.perf_counter()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).to(x.device)
        xs, ys = x[order], y[order]
        for start in range(0, len(x), batch_size):
            loss = F.cross_entropy(model(xs[start : start + batch_size]), ys[start : start + batch_size])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            if steps == max_steps:
                break
        seconds += time.perf_counter() - began
        with torch.no_grad():  # the runner evaluates every epoch; so does this loop
            model.eval()
            F.cross_entropy(model(data.val_x), data.val_y).item()
            model.train()
        if steps == max_steps:
            break
    return seconds, steps


def measure(overrides: list[str], repeats: int, extra: list[str] | None = None) -> tuple[float, bool]:
    """Returns (runner steps/s over hand-written steps/s, final weights bitwise equal)."""
    cfg = runner.compose(["trainer.progress=off", *OFF, *overrides, *(extra or [])])
    base = prepare(validate(cfg))
    spec = base.spec
    initial = copy.deepcopy(base.model)
    equal = []

    def run_runner() -> float:
        prepared = copy.copy(base)
        prepared.model = copy.deepcopy(initial)
        with tempfile.TemporaryDirectory() as tmp:
            summary = run_training(prepared, Path(tmp))
        run_runner.model = prepared.model
        return summary["steps_per_second"]

    def run_plain() -> float:
        model = copy.deepcopy(initial)
        seconds, steps = hand_written(model, base.data.to(base.device, base.dtype), spec.trainer.epochs, spec.trainer.batch_size, dict(spec.optim.args)["lr"], spec.seed,
                                      spec.trainer.max_steps)
        equal.append(all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), run_runner.model.state_dict().values())))
        return steps / seconds

    ours, plain = alternate(run_runner, run_plain, repeats)
    return ours / plain, all(equal)


def first_run(side: str, overrides: list[str]) -> dict:
    """One side's first training run in this (fresh) process: steps/s and the final weights' hash. Both sides
    build and train on the threads a user's run gets (Plan.threads: other counts give other bits; what the
    count itself is worth is figure 18)."""
    plan = validate(runner.compose(overrides))
    with torch_threads(plan.threads):
        return _first_run(side, plan)


def _first_run(side: str, plan) -> dict:
    base = prepare(plan)
    if side == "plain":
        spec = base.spec
        seconds, steps = hand_written(base.model, base.data.to(base.device, base.dtype), spec.trainer.epochs, spec.trainer.batch_size,
                                      dict(spec.optim.args)["lr"], spec.seed, spec.trainer.max_steps)
        rate = steps / seconds
    else:
        with tempfile.TemporaryDirectory() as tmp:
            rate = run_training(base, Path(tmp))["steps_per_second"]
    return {"steps_per_second": rate, "sha256": tensors_sha256(base.model.state_dict().items())}


def measure_fresh(overrides: list[str], repeats: int) -> tuple[float, bool]:
    """Returns (runner with default settings / plain loop, each the first run of its own process; weights equal)."""
    def launch(side: str) -> dict:
        command = [sys.executable, "-m", "bench.training_loop", side, "--", *overrides]
        result = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True)
        return json.loads(result.stdout.strip().splitlines()[-1])

    ours, plain = [], []
    for _ in range(repeats):
        ours.append(launch("runner"))
        plain.append(launch("plain"))
    equal = all(a["sha256"] == b["sha256"] for a, b in zip(ours, plain))
    return statistics.median(r["steps_per_second"] for r in ours) / statistics.median(r["steps_per_second"] for r in plain), equal


def rows(repeats: int, smoke: bool = False) -> list[Row]:
    result = []
    for size, overrides in SIZES.items():
        fresh = [o for o in overrides if not o.startswith("trainer.epochs=")] + FRESH[size] if "2M" in size else list(FRESH[size])
        ratio, equal = measure_fresh([*fresh, *(["trainer.max_steps=20"] if smoke else [])], 1 if smoke else repeats)
        goal = ">= 0.95" if "digits" in size else ">= 0.99"
        result.append(Row("1. runner, default observability / hand-written loop (first run, fresh processes)", size, ratio, goal,
                          "final weights bitwise equal" if equal else "WEIGHTS DIFFER"))
    for size, overrides in SIZES.items():
        extra = ["trainer.max_steps=20"] if smoke else None
        ratio, equal = measure(overrides, repeats, extra)
        result.append(Row("1. reference: runner, every statistic and writer off / hand-written loop", size, ratio, "(report)",
                          "final weights bitwise equal" if equal else "WEIGHTS DIFFER"))
    return result


if __name__ == "__main__":  # python -m bench.training_loop runner|plain -- OVERRIDES: one fresh-process run
    parser = argparse.ArgumentParser()
    parser.add_argument("side", choices=("runner", "plain"))
    parser.add_argument("overrides", nargs="*")
    arguments = parser.parse_args()
    print(json.dumps(first_run(arguments.side, arguments.overrides)))
