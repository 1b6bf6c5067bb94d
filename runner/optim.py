"""Optimizer, parameter groups and learning-rate schedule from config.

Every trainable tensor lands in exactly one group; frozen tensors and buffers never reach the
optimizer, and a tied tensor appears once.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from runner.config import OptimConfig, SchedulerConfig
from runner.errors import Problems, suggest
from runner.registry import module_type_names
from runner.tensors import TensorEntry, matches, tensor_index

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
SCHEDULERS = ("none", "step", "cosine", "warmup_cosine")
GROUP_KEYS = ("match", "lr", "weight_decay", "momentum", "betas")
NORM_LAYERS = ("LayerNorm", "GroupNorm", "RMSNorm", "_NormBase")  # _NormBase: every BatchNorm and InstanceNorm


def trainable(model: nn.Module) -> list[TensorEntry]:
    """Returns the unique trainable tensors."""
    return [e for e in tensor_index(model) if e.kind == "parameter"]


def assign_groups(entries: list[TensorEntry], cfg: OptimConfig, problems: Problems) -> list[tuple[dict, list[TensorEntry]]]:
    """Returns (group settings, tensors) pairs covering every trainable tensor exactly once."""
    declared = list(cfg.param_groups) or [{}]
    for index, group in enumerate(declared):
        for key in set(group) - set(GROUP_KEYS):
            problems.add(f"optim.param_groups[{index}].{key}", f"unknown key; a group takes {', '.join(GROUP_KEYS)}")
        if "lr" in group and not (isinstance(group["lr"], (int, float)) and group["lr"] > 0):
            problems.add(f"optim.param_groups[{index}].lr", f"expected a number > 0, got {group['lr']!r}")
    explicit = [i for i, g in enumerate(declared) if "match" in g]
    rest = [i for i, g in enumerate(declared) if "match" not in g]
    if len(rest) > 1:
        problems.add(f"optim.param_groups[{rest[1]}]", "only one group may leave out `match` (it takes the rest)")
    members: list[list[TensorEntry]] = [[] for _ in declared]
    for entry in entries:
        hits = [i for i in explicit if any(matches(entry.names, p) for p in _patterns(declared[i]["match"]))]
        if len(hits) > 1:
            problems.add("optim.param_groups", f"{entry.name!r} is in groups {hits}; each tensor must be in exactly one")
        elif hits:
            members[hits[0]].append(entry)
        elif rest:
            members[rest[0]].append(entry)
        else:
            problems.add("optim.param_groups", f"{entry.name!r} is in no group; add it to one, or add a group without `match`")
    for index in explicit:
        if not members[index]:
            problems.add(f"optim.param_groups[{index}].match", f"{declared[index]['match']!r} matches no trainable tensor")
    return [(dict(group), member) for group, member in zip(declared, members) if member]


def _patterns(match: Any) -> list[str]:
    return [str(m) for m in match] if isinstance(match, (list, tuple)) else [str(match)]


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Returns the configured torch.optim optimizer over the model's unique trainable tensors."""
    problems = Problems()
    groups = assign_groups(trainable(model), cfg, problems)
    problems.raise_if_any()
    torch_groups = []
    for settings, members in groups:
        hyper = {**_hyperparameters(cfg), **{k: tuple(v) if k == "betas" else v for k, v in settings.items() if k != "match"}}
        if cfg.name == "sgd":
            hyper.pop("betas", None)
        else:
            hyper.pop("momentum", None)
        decay = [e for e in members if not (cfg.no_decay_bias_and_norm and _exempt_from_decay(e))]
        exempt = [e for e in members if e not in decay]
        for subset, extra in ((decay, {}), (exempt, {"weight_decay": 0.0})):
            if subset:
                torch_groups.append({"params": [e.tensor for e in subset], "names": [e.name for e in subset], **hyper, **extra})
    return OPTIMIZERS[cfg.name](torch_groups)


def _exempt_from_decay(entry: TensorEntry) -> bool:
    return entry.role == "bias" or bool(set(NORM_LAYERS) & module_type_names(entry.module_type))


def _hyperparameters(cfg: OptimConfig | Any) -> dict[str, Any]:
    common: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if cfg.name == "sgd":
        return {**common, "momentum": cfg.momentum}
    return {**common, "betas": tuple(cfg.betas)}


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, total_steps: int) -> Any:
    """Returns a torch.optim.lr_scheduler stepped once per optimizer step, or None."""
    from torch.optim import lr_scheduler

    if cfg.name == "none":
        return None
    if cfg.name == "step":
        return lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.name == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1), eta_min=cfg.min_lr)
    warmup = lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=max(cfg.warmup_steps, 1))
    cosine = lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps - cfg.warmup_steps, 1), eta_min=cfg.min_lr)
    return lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[max(cfg.warmup_steps, 1)])


def check_scheduler(cfg: SchedulerConfig, problems: Problems) -> None:
    """Adds a problem for each invalid scheduler setting."""
    if cfg.name not in SCHEDULERS:
        problems.add("optim.scheduler.name", f"expected one of {', '.join(SCHEDULERS)}, got {cfg.name!r};{suggest(cfg.name, SCHEDULERS)}".rstrip(";"))
    if cfg.step_size < 1:
        problems.add("optim.scheduler.step_size", f"expected an integer >= 1, got {cfg.step_size}")
    if not 0 < cfg.gamma <= 1:
        problems.add("optim.scheduler.gamma", f"expected 0 < gamma <= 1, got {cfg.gamma}")
    if cfg.warmup_steps < 0:
        problems.add("optim.scheduler.warmup_steps", f"expected an integer >= 0, got {cfg.warmup_steps}")
    if cfg.min_lr < 0:
        problems.add("optim.scheduler.min_lr", f"expected a number >= 0, got {cfg.min_lr}")
