"""`runner.evaluate(run_dir, overrides)` and `python -m runner.evaluate <run dir> [overrides]`: the
metrics of a trained run's model on the validation data of its saved config, with data overrides
(`data.root=OTHER`, `data.val_fraction=0.5`, `data=cifar10`, ...) in the grammar of a new run.
`runner.predict(run_dir, inputs)`: the model's outputs for inputs shaped as its data.

The model is the run's own, loaded as `runner.load` loads it (its newest checkpoint, hashes
verified, nothing unpickled); an override of `model.*` or `init.*` is refused, since the weights
would not be what they describe. The data is checked against the model before anything is read.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any, Sequence

import torch
from omegaconf import OmegaConf

from runner.api import compose_resumed, load, locate_run, model_changes, saved_config
from runner.data.sources import load_data, sample_shape
from runner.data.transforms import make_pipeline
from runner.errors import ConfigError, report_errors
from runner.prepare.plan import check
from runner.registry.tables import DTYPES, TASKS
from runner.training.evaluation import EVAL_CHUNK, loss_function
from runner.training.evaluation import evaluate as evaluate_split


def evaluate(run_dir: str | Path, overrides: Sequence[str] = (), device: str = "cpu", ema: bool = False) -> dict:
    """Returns {"val_loss", "val_<metric>" for each of the config's `metrics:`, "samples", "checkpoint"} of the run's model
    (its EMA weights with `ema=True`) on the validation data its config, with `overrides`, describes."""
    latest, run_dir = locate_run(run_dir)
    cfg = compose_resumed(latest, run_dir, overrides)
    changed = model_changes(saved_config(latest), OmegaConf.to_container(cfg, resolve=True), "evaluate uses the run's trained model as it "
                                                                                              "was saved: no model.* or init.* overrides")
    if changed:  # before the checks: another model would first fail them, less clearly
        raise ConfigError(changed)
    plan, _ = check(cfg, machine=False)  # the model against the data's declared shape; the training device is not needed
    spec = plan.spec
    data = load_data(spec.data)
    model = load(latest, device=device, ema=ema)
    data = data.to(next(iter(model.parameters())).device, DTYPES[spec.trainer.dtype])
    result = evaluate_split(model, data.val_x, data.val_y, loss_function(spec.data.task, spec.loss), spec.metrics)
    return {**result.record(), "samples": len(data.val_x), "checkpoint": str(latest)}


@torch.no_grad()
def predict(run_dir: str | Path, inputs: Any, device: str = "cpu", ema: bool = False) -> torch.Tensor:
    """Returns the run's model's outputs (raw: logits for classes) for `inputs`, samples shaped as its data's
    (N, *data.shape), or one such sample; a tensor, a NumPy array or nested lists. They go through the run's
    evaluation transforms first (normalize with the statistics training used), in eval mode, in chunks."""
    latest, run_dir = locate_run(run_dir)
    spec = check(compose_resumed(latest, run_dir, ()), machine=False)[0].spec
    model = load(latest, device=device, ema=ema)
    task, shape = TASKS[spec.data.task], sample_shape(spec.data)
    x = torch.as_tensor(inputs)
    if tuple(x.shape) == shape:
        x = x[None]
    if tuple(x.shape[1:]) != shape:
        raise ValueError(f"inputs: expected samples of shape {list(shape)} (the run's data.shape), as (N, {', '.join(map(str, shape))}); "
                         f"got a tensor of shape {list(x.shape)}")
    if task.input_dtype.is_floating_point != x.is_floating_point():
        raise ValueError(f"inputs: the run's data ({spec.data.task}) has {'numbers' if task.input_dtype.is_floating_point else 'integer ids'} "
                         f"as features; got {x.dtype}")
    x = x.to(next(iter(model.parameters())).device, DTYPES[spec.trainer.dtype] if x.is_floating_point() else torch.long)
    pipeline = make_pipeline(list(spec.data.transforms.eval))
    if pipeline.needs_fit:  # a run saved before its fitted statistics were written into its config: fit them again, on its training data
        pipeline = load_data(spec.data).eval_transform
    x = pipeline(x)
    return torch.cat([model(x[start : start + EVAL_CHUNK]) for start in range(0, len(x), EVAL_CHUNK)])


def main(argv: list[str]) -> None:
    """`python -m runner.evaluate <run dir> [overrides]`: prints the metrics as JSON."""
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.split("\n\n")[0])
        print("usage: python -m runner.evaluate <run dir> [overrides ...]")
        sys.exit(0 if argv else 2)
    metrics = report_errors(lambda: evaluate(argv[0], argv[1:]))
    print(json.dumps(metrics, indent=2))


class _CallableModule(types.ModuleType):
    """`import runner.evaluate` binds the name to this module: calling it calls evaluate(), so
    `runner.evaluate(run_dir)` means the same whichever of the two the name holds."""

    def __call__(self, *args, **kwargs) -> dict:
        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    main(sys.argv[1:])
