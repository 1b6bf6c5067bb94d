"""Spec -> a model ready to train: build on CPU, declare tensors, fit data-dependent buffers,
initialize from the seed, then place on the device and re-verify the ties."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from runner.build import build_model
from runner.data import Dataset, load_data
from runner.distributed import ddp_device
from runner.errors import Problems
from runner.initialization import InitPlan, Provenance, apply_init, plan_init
from runner.layers import Normalize
from runner.placement import DTYPES, place, resolve_device
from runner.spec import RunSpec
from runner.tensors import Tie, declare_tensors, verify_ties

LSUV_BATCH = 256


@dataclass
class Prepared:
    """A built, initialized and placed model with everything that describes how it got there."""

    spec: RunSpec
    model: nn.Module
    data: Dataset  # on the CPU, float32
    ties: list[Tie]
    plan: InitPlan
    provenance: dict[str, Provenance]
    device: torch.device
    dtype: torch.dtype


def prepare(spec: RunSpec, data: Dataset | None = None) -> Prepared:
    """Returns the model for a validated spec: built, initialized on the CPU from the seed, placed."""
    data = data if data is not None else load_data(spec.data)
    model, ties, plan = build_declared(spec)
    fitted = _fit_buffers(model, data.train_x)
    provenance = {**apply_init(model, plan, spec.seed, batch=data.train_x[:LSUV_BATCH]), **fitted}
    device = ddp_device(resolve_device(spec.trainer.device), spec.trainer.strategy)
    dtype = DTYPES[spec.trainer.dtype]
    place(model, device, dtype)
    verify_ties(model, ties)
    return Prepared(spec, model, data, ties, plan, provenance, device, dtype)


def build_declared(spec: RunSpec) -> tuple[nn.Module, list[Tie], InitPlan]:
    """Returns the CPU model with PyTorch's default init (drawn from the seed), its ties and init plan."""
    problems = Problems()
    # Constructors draw their default init from the global RNG: seed it, without disturbing the caller's.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = build_model(spec.layers, problems)
    ties = declare_tensors(model, spec.model, problems)
    plan = plan_init(model, spec.init, problems)
    problems.raise_if_any()  # validate() already passed on meta; this guards direct callers
    return model, ties, plan


def _fit_buffers(model: nn.Module, features: torch.Tensor) -> dict[str, Provenance]:
    """Fits data-dependent buffers (Normalize's mean and std) on the training features; returns their provenance."""
    fitted: dict[str, Provenance] = {}
    for name, module in model.named_modules():
        if isinstance(module, Normalize):
            module.fit(features)
            fitted[f"{name}.mean"] = fitted[f"{name}.std"] = Provenance("fitted on training data")
    return fitted
