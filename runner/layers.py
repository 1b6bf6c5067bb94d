"""The project's own layer types, usable in model YAML beside every torch.nn layer."""

from __future__ import annotations

import math

import torch
from torch import nn


class Residual(nn.Sequential):
    """x + f(x), where f is the block's children run in order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


class Normalize(nn.Module):
    """(x - mean) / std with mean and std as persistent buffers, fitted on the training data.

    Being buffers, they are saved with the weights, so a loaded model normalizes its inputs
    exactly as it did in training, and the optimizer never sees them.
    """

    def __init__(self, num_features: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))

    def fit(self, features: torch.Tensor) -> None:
        """Sets mean and std from the training features (called once, before init)."""
        flat = features.reshape(features.shape[0], -1).to(torch.float64)
        std = flat.std(0)
        # A feature constant in training (a border pixel) is centred but not scaled: dividing by
        # ~0 would blow up any other value it takes at test time.
        std = torch.where(std < self.eps, torch.ones_like(std), std)
        self.mean.copy_(flat.mean(0).reshape(self.mean.shape))
        self.std.copy_(std.reshape(self.std.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class PositionalEncoding(nn.Module):
    """Adds the sinusoidal position code of 'Attention is all you need' to (batch, seq, dim) input.

    The code is a non-persistent buffer: derived from the shape alone, rebuilt on load, never saved.
    """

    def __init__(self, dim: int, max_len: int = 512):
        super().__init__()
        self.register_buffer("encoding", sinusoidal_encoding(max_len, dim), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.encoding[: x.shape[1]].to(x.dtype)


def sinusoidal_encoding(max_len: int, dim: int) -> torch.Tensor:
    """Returns the (max_len, dim) sinusoidal position table."""
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(max_len, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table


class LearnedPositionalEmbedding(nn.Module):
    """Adds a learned (max_len, dim) position table (a trainable parameter) to (batch, seq, dim) input."""

    def __init__(self, dim: int, max_len: int = 512):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(max_len, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.weight[: x.shape[1]]


class CausalEncoderLayer(nn.TransformerEncoderLayer):
    """A batch-first TransformerEncoderLayer that only lets each position attend to earlier ones."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 256, dropout: float = 0.0):
        super().__init__(d_model, nhead, dim_feedforward, dropout, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1], device=x.device, dtype=x.dtype)
        return super().forward(x, src_mask=mask, is_causal=True)


class TokensToRows(nn.Module):
    """Flattens (batch, seq, dim) to (batch * seq, dim) so a per-token head sees one row per token."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, x.shape[-1])


PROJECT_LAYERS: dict[str, type[nn.Module]] = {
    "Residual": Residual,
    "Normalize": Normalize,
    "PositionalEncoding": PositionalEncoding,
    "LearnedPositionalEmbedding": LearnedPositionalEmbedding,
    "CausalEncoderLayer": CausalEncoderLayer,
    "TokensToRows": TokensToRows,
}
