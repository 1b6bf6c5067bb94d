"""Optimizer and learning-rate schedule from config; every trainable tensor in exactly one group."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from runner.config import OptimConfig
from runner.tensors import TensorEntry, tensor_index

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def trainable(model: nn.Module) -> list[TensorEntry]:
    """Returns the unique trainable tensors: frozen tensors and buffers never reach the optimizer."""
    return [e for e in tensor_index(model) if e.kind == "parameter"]


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Returns the configured torch.optim optimizer over the model's unique trainable tensors."""
    params = [e.tensor for e in trainable(model)]
    return OPTIMIZERS[cfg.name](params, **_hyperparameters(cfg))


def _hyperparameters(cfg: OptimConfig | Any) -> dict[str, Any]:
    common: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if cfg.name == "sgd":
        return {**common, "momentum": cfg.momentum}
    return {**common, "betas": tuple(cfg.betas)}
