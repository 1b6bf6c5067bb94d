"""The project's own layer types, usable in model YAML beside every torch.nn layer.

Graph is what a container (or the model) becomes when its layers are wired by name; the merge
layers (Add, Mul, Concat, MatMul) take several inputs; Permute, Select and Slice reshape one;
SplitHeads, ScaledDotProductAttention and MergeHeads are multi-head attention spelled out (as
nanoGPT's CausalSelfAttention does); Item takes one element of a layer's tuple output; Detach,
Sum and Mean are the notes' `.data` reads and `X.sum()`.
"""

from __future__ import annotations

import math
from functools import reduce

import torch
import torch.nn.functional as F
from torch import nn


def axis(dim: int, ndim: int) -> int:
    """Returns `dim` as an index in [0, ndim), negative counting from the end; out of range is an error, as in torch."""
    if not -ndim <= dim < ndim:
        raise IndexError(f"dim {dim} is out of range for a tensor of {ndim} dims (expected {-ndim} to {ndim - 1})")
    return dim % ndim


class Residual(nn.Sequential):
    """x + f(x), where f is the block's children run in order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


class Graph(nn.Module):
    """Layers wired by name: each step calls its layer on the named values, in declaration order.

    A name in a step's inputs is `input` (this graph's input), an earlier step's output, or a
    tensor registered on this graph (a parameter or buffer it owns). Layers are submodules under
    their declared names, so tensor names are the same as in a chain (`f.weight`).
    """

    def __init__(self, output: str, residual: bool = False):
        super().__init__()
        self.steps: list[tuple[str, tuple[str, ...]]] = []
        self.output = output
        self.residual = residual  # x + graph(x), as Residual is for a chain

    def add_step(self, name: str, module: nn.Module, inputs: tuple[str, ...]) -> None:
        self.add_module(name, module)
        self.steps.append((name, inputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = {"input": x}
        modules = self._modules
        for name, inputs in self.steps:
            values[name] = modules[name](*[values[i] if i in values else getattr(self, i) for i in inputs])  # type: ignore[misc]
        out = values[self.output] if self.output in values else getattr(self, self.output)
        return x + out if self.residual else out

    def extra_repr(self) -> str:
        wiring = "; ".join(f"{name}({', '.join(inputs)})" for name, inputs in self.steps)
        return f"{wiring} -> {self.output}" + (" + input" if self.residual else "")


class Add(nn.Module):
    """The sum of its inputs, broadcast together as torch's `+` broadcasts."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return reduce(torch.add, xs)


class Mul(nn.Module):
    """The elementwise product of its inputs, broadcast together as torch's `*` broadcasts."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return reduce(torch.mul, xs)


class MatMul(nn.Module):
    """a @ b (torch.matmul: batched, broadcasting the batch dims)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(a, b)


class Concat(nn.Module):
    """Its inputs joined along `dim`; every other dim is broadcast first, so a declared (1, 1, d)
    token joins a (batch, n, d) sequence as (batch, n + 1, d)."""

    def __init__(self, dim: int = 1):
        super().__init__()
        self.dim = dim

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        ndim = max(x.dim() for x in xs)
        dim = axis(self.dim, ndim)
        shapes = [[1] * (ndim - x.dim()) + list(x.shape) for x in xs]
        if all(s[:dim] + s[dim + 1:] == shapes[0][:dim] + shapes[0][dim + 1:] for s in shapes):
            return torch.cat([x.reshape(s) for x, s in zip(xs, shapes)], dim)
        common = list(torch.broadcast_shapes(*[tuple(s[:dim] + [1] + s[dim + 1:]) for s in shapes]))
        return torch.cat([x.reshape(s).expand(*common[:dim], s[dim], *common[dim + 1:]) for x, s in zip(xs, shapes)], dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Permute(nn.Module):
    """Its input with dims reordered (torch.permute)."""

    def __init__(self, dims: tuple[int, ...]):
        super().__init__()
        self.dims = tuple(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(self.dims)

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


class Reshape(nn.Module):
    """Each sample viewed as `shape`: flat rows become images, and images already of that shape pass
    unchanged (x.reshape(len(x), *shape)), so one model takes both."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class Select(nn.Module):
    """One index along `dim`, that dim removed (torch.select): ViT's class token is Select(1, 0)."""

    def __init__(self, dim: int, index: int):
        super().__init__()
        self.dim, self.index = dim, index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.select(self.dim, self.index)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, index={self.index}"


class Slice(nn.Module):
    """x[..., start:stop] along `dim` (a view, as Python slicing is): `pe[:seq_len]` of a position table."""

    def __init__(self, dim: int = 0, start: int = 0, stop: int | None = None):
        super().__init__()
        self.dim, self.start, self.stop = dim, start, stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[(slice(None),) * axis(self.dim, x.dim()) + (slice(self.start, self.stop),)]

    def extra_repr(self) -> str:
        return f"dim={self.dim}, start={self.start}, stop={self.stop}"


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


def sinusoidal_encoding(max_len: int, dim: int, base: float = 10000.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Returns the (max_len, dim) sinusoidal position table, computed in `dtype`."""
    position = torch.arange(max_len, dtype=dtype).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=dtype) * (-math.log(base) / dim))
    table = torch.zeros(max_len, dim, dtype=dtype)
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


class Item(nn.Module):
    """Element `index` of a layer's tuple output: MultiheadAttention returns (output, weights), so
    `{type: Item, index: 0}` after it passes the output on."""

    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def forward(self, x: tuple | list) -> object:
        if not isinstance(x, (tuple, list)):
            raise TypeError(f"Item takes one element of a layer's tuple output, got a {type(x).__name__}"
                            " (to pick along a tensor's dim, use Select)")
        if not -len(x) <= self.index < len(x):
            raise IndexError(f"index {self.index} is out of range for a tuple of {len(x)} elements")
        return x[self.index]

    def extra_repr(self) -> str:
        return f"index={self.index}"


class SplitHeads(nn.Module):
    """(batch, seq, channels) -> (batch, num_heads, seq, channels / num_heads): nanoGPT's
    `k.view(B, T, n_head, C // n_head).transpose(1, 2)`."""

    def __init__(self, num_heads: int):
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {num_heads}")
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[-1] % self.num_heads:
            raise ValueError(f"expected (..., seq, channels) with channels divisible by num_heads={self.num_heads}, got shape {tuple(x.shape)}")
        return x.unflatten(-1, (self.num_heads, x.shape[-1] // self.num_heads)).transpose(-3, -2)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}"


class MergeHeads(nn.Module):
    """(batch, heads, seq, head_dim) -> (batch, seq, heads * head_dim), SplitHeads undone: nanoGPT's
    `y.transpose(1, 2).contiguous().view(B, T, C)`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3:
            raise ValueError(f"expected (..., heads, seq, head_dim), got shape {tuple(x.shape)}")
        return x.transpose(-3, -2).flatten(-2)


class ScaledDotProductAttention(nn.Module):
    """softmax(q k^T * scale + mask) v over (batch, heads, seq, head_dim) inputs q, k, v
    (torch.nn.functional.scaled_dot_product_attention; `scale` defaults to 1 / sqrt(head_dim)).

    A fourth input, if wired, is the additive float mask (-inf where a query may not look) or a
    boolean one (True where it may); `is_causal` is the causal mask without one. `dropout` drops
    attention weights in training only.
    """

    def __init__(self, is_causal: bool = False, dropout: float = 0.0, scale: float | None = None):
        super().__init__()
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be in [0, 1], got {dropout}")
        self.is_causal, self.dropout, self.scale = is_causal, dropout, scale

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None and self.is_causal:
            raise ValueError("is_causal: true and a mask input exclude each other (the mask says where to look)")
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
                                              is_causal=self.is_causal, scale=self.scale)

    def extra_repr(self) -> str:
        return f"is_causal={self.is_causal}, dropout={self.dropout}" + (f", scale={self.scale}" if self.scale is not None else "")


class Detach(nn.Module):
    """Its input, cut from the autograd graph (x.detach()): the notes' forward reading `self.weight.data`,
    so what comes before gets no gradient through here."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.detach()


class _Reduction(nn.Module):
    def __init__(self, dim: int | tuple[int, ...] | None = None, keepdim: bool = False):
        super().__init__()
        if isinstance(dim, tuple) and not dim:
            raise ValueError("dim: [] names no dim (null reduces over all of them)")
        self.dim, self.keepdim = dim, keepdim

    def extra_repr(self) -> str:
        return f"dim={self.dim}, keepdim={self.keepdim}"


class Sum(_Reduction):
    """The sum over `dim` (an int, a list, or null: every dim, the notes' `X.sum()`), kept as size-1 dims with `keepdim`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sum(x, dim=self.dim, keepdim=self.keepdim)


class Mean(_Reduction):
    """The mean over `dim` (an int, a list, or null: every dim), kept as size-1 dims with `keepdim`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.mean(x, dim=self.dim, keepdim=self.keepdim)


PROJECT_LAYERS: dict[str, type[nn.Module]] = {
    "Residual": Residual,
    "Add": Add,
    "Mul": Mul,
    "MatMul": MatMul,
    "Concat": Concat,
    "Permute": Permute,
    "Reshape": Reshape,
    "Select": Select,
    "Slice": Slice,
    "Normalize": Normalize,
    "PositionalEncoding": PositionalEncoding,
    "LearnedPositionalEmbedding": LearnedPositionalEmbedding,
    "CausalEncoderLayer": CausalEncoderLayer,
    "TokensToRows": TokensToRows,
    "Item": Item,
    "SplitHeads": SplitHeads,
    "MergeHeads": MergeHeads,
    "ScaledDotProductAttention": ScaledDotProductAttention,
    "Detach": Detach,
    "Sum": Sum,
    "Mean": Mean,
}
