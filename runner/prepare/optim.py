"""Optimizer, parameter groups and learning-rate schedule from config.

Every trainable tensor lands in exactly one group; frozen tensors and buffers never reach the
optimizer, and a tied tensor appears once.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from runner.config.schema import SchedulerConfig
from runner.errors import Problems
from runner.model.tensors import TensorEntry, matches, tensor_index
from runner.registry.tables import SCHEDULERS, module_type_names, optimizers
from runner.spec.types import GroupSpec, OptimSpec

NORM_LAYERS = ("LayerNorm", "GroupNorm", "RMSNorm", "_NormBase")  # _NormBase: every BatchNorm and InstanceNorm

Membership = tuple[tuple[GroupSpec, tuple[str, ...]], ...]


def trainable(model: nn.Module) -> list[TensorEntry]:
    """Returns the unique trainable tensors."""
    return [e for e in tensor_index(model) if e.kind == "parameter"]


def assign_groups(entries: list[TensorEntry], spec: OptimSpec, problems: Problems) -> Membership:
    """Returns (group, tensor names) pairs covering every trainable tensor exactly once."""
    if not entries:
        problems.add("model", "the model has no trainable tensor (every parameter is frozen or a buffer): there is nothing to optimize")
        return ()
    explicit = [g for g in spec.groups if g.patterns is not None]
    rest = [g for g in spec.groups if g.patterns is None]
    members: dict[int, list[str]] = {g.index: [] for g in spec.groups}
    for entry in entries:
        hits = [g for g in explicit if any(matches(entry.names, p) for p in g.patterns or ())]
        if len(hits) > 1:
            problems.add("optim.param_groups", f"{entry.name!r} is in groups {', '.join(g.label for g in hits)}; each tensor must be in exactly one")
        elif hits:
            members[hits[0].index].append(entry.name)
        elif rest:
            members[rest[0].index].append(entry.name)
        else:
            problems.add("optim.param_groups", f"{entry.name!r} is in no group; add it to one, or add a group without `match`")
    for group in explicit:
        if not members[group.index]:
            problems.add(f"optim.param_groups[{group.index}].match", f"{list(group.patterns or ())} matches no trainable tensor")
    return tuple((g, tuple(members[g.index])) for g in spec.groups if members[g.index])


def make_optimizer(model: nn.Module, spec: OptimSpec, membership: Membership) -> torch.optim.Optimizer:
    """Returns the torch.optim optimizer over the planned groups of the model's trainable tensors."""
    by_name = {e.name: e for e in trainable(model)}
    torch_groups = []
    for group, names in membership:
        hyper = {**dict(spec.args), **dict(group.args)}
        members = [by_name[name] for name in names]
        decay = [e for e in members if not (spec.no_decay_bias_and_norm and _exempt_from_decay(e))]
        exempt = [e for e in members if e not in decay]
        for subset, extra in ((decay, {}), (exempt, {"weight_decay": 0.0})):
            if subset:
                torch_groups.append({"params": [e.tensor for e in subset], "names": [e.name for e in subset],
                                     "group": group.label, **hyper, **extra})
    return optimizers()[spec.name](torch_groups)


def _exempt_from_decay(entry: TensorEntry) -> bool:
    return entry.role == "bias" or bool(set(NORM_LAYERS) & module_type_names(entry.module_type))


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, total_steps: int) -> Any:
    """Returns a torch.optim.lr_scheduler stepped once per optimizer step, or None."""
    return SCHEDULERS[cfg.name](optimizer, cfg, total_steps)
