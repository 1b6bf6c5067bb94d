"""Where the model runs: device resolution (with a clear error for an absent device) and dtype."""

from __future__ import annotations

import torch
from torch import nn


def available_devices() -> list[str]:
    """Returns the devices this machine offers, e.g. ['cpu', 'cuda', 'cuda:0']."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(name: str) -> torch.device:
    """Returns the torch.device for a validated name; `auto` prefers cuda, then mps, then cpu."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def place(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Moves and casts the model in place (parameter objects keep their identity, so ties hold)."""
    return model.to(device=device, dtype=dtype)
