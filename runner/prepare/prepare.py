"""Plan -> a model ready to train: materialize on the CPU, fit data-dependent buffers, initialize
from the seed, then place on the device and re-verify the ties."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from runner.data.sources import Dataset, load_data
from runner.init import pretrained
from runner.init.apply import Provenance, apply_init, copy_pretrained
from runner.model.distributed import ddp_device
from runner.model.placement import place, resolve_device
from runner.model.tensors import verify_ties
from runner.prepare.plan import Plan
from runner.registry.layers import Normalize
from runner.registry.tables import DTYPES
from runner.spec import RunSpec
from runner.spec.types import TieSpec

LSUV_BATCH = 256


@dataclass
class Prepared:
    """A built, initialized and placed model with everything that describes how it got there."""

    plan: Plan
    model: nn.Module
    data: Dataset  # on the CPU, float32
    provenance: dict[str, Provenance]
    device: torch.device
    dtype: torch.dtype

    @property
    def spec(self) -> RunSpec:
        return self.plan.spec

    @property
    def ties(self) -> tuple[TieSpec, ...]:
        return self.plan.declarations.ties


def prepare(plan: Plan, data: Dataset | None = None) -> Prepared:
    """Returns the model for a plan: materialized, initialized on the CPU from the seed, placed."""
    spec = plan.spec
    data = data if data is not None else load_data(spec.data)
    model = plan.materialize()
    # What the model sees of the training images: the deterministic (eval) transforms applied, as at evaluation.
    seen = getattr(data, "eval_transform", None) or (lambda x: x)
    fitted = _fit_buffers(model, data.train_x, seen)
    loaded = pretrained.read(plan)
    batch = seen(data.train_x[:LSUV_BATCH])
    provenance = {**apply_init(model, plan.init, spec.seed, batch=batch, modifiers=plan.modifiers, pretrained=loaded), **fitted}
    device = ddp_device(resolve_device(spec.trainer.device), spec.trainer.strategy)
    dtype = DTYPES[spec.trainer.dtype]
    place(model, device, dtype)
    copy_pretrained(model, loaded, plan.modifiers)
    verify_ties(model, plan.declarations.ties)
    return Prepared(plan, model, data, provenance, device, dtype)


def _fit_buffers(model: nn.Module, features: torch.Tensor, seen: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, Provenance]:
    """Fits data-dependent buffers (Normalize's mean and std) on the training features as the model sees
    them (`seen`: the deterministic transforms); returns their provenance."""
    fitted: dict[str, Provenance] = {}
    layers = [(name, module) for name, module in model.named_modules() if isinstance(module, Normalize)]
    features = seen(features) if layers else features
    for name, module in layers:
        module.fit(features)
        fitted[f"{name}.mean"] = fitted[f"{name}.std"] = Provenance("fitted on training data")
    return fitted
