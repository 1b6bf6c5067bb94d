"""data=tokens: a flat binary file of token ids (nanoGPT's `train.bin` / `val.bin`: uint16, or uint32
with data.dtype), read through numpy.memmap, so the training stream may be larger than memory.

Training batches are random windows of `block_size` ids with the next ids as targets, as nanoGPT's
`get_batch` draws them. An epoch is (len(train.bin) - 1) // block_size windows, about one pass over
the tokens; its window starts come from the seed and the epoch alone, so a run resumed mid-epoch
draws exactly the windows an uninterrupted one would. Validation is every non-overlapping window of
val.bin, in order, held in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from runner.data.loader import Shard, rank_part
from runner.errors import ConfigError, Problem

DTYPES = {"uint16": np.uint16, "uint32": np.uint32}
_CHECKED = 1 << 24  # ids checked against vocab_size: all of val.bin, the first 16M of train.bin


def read_ids(path: Path, dtype: str, vocab_size: int) -> np.ndarray:
    """Returns the ids of a token file as a read-only memmap, its leading ids checked against vocab_size."""
    if not path.is_file():
        raise ConfigError([Problem("data.root", f"has no {path.name} ({path}): a flat file of {dtype} token ids, as nanoGPT's prepare.py writes it")])
    size = path.stat().st_size
    width = np.dtype(DTYPES[dtype]).itemsize
    if size % width:
        raise ConfigError([Problem("data.dtype", f"{path} holds {size} bytes, not a whole number of {dtype} ids ({width} bytes each)")])
    ids = np.memmap(path, dtype=DTYPES[dtype], mode="r")
    if len(ids) < 2:
        raise ConfigError([Problem("data.root", f"{path} holds {len(ids)} token id(s): a window needs at least 2")])
    top = int(ids[:_CHECKED].max())
    if top >= vocab_size:
        raise ConfigError([Problem("data.vocab_size", f"is {vocab_size} but {path} holds id {top} (ids run from 0 to vocab_size - 1)")])
    return ids


@dataclass(frozen=True)
class TokenStream:
    """The token data of a run: the training ids (a memmap, read per batch) and the validation windows."""

    train: np.ndarray
    block_size: int
    val_x: torch.Tensor
    val_y: torch.Tensor
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @cached_property  # read once: prepare asks for it twice (buffers to fit, LSUV's batch)
    def train_x(self) -> torch.Tensor:
        """The first 256 non-overlapping training windows: what a batch-needing init (LSUV) is given."""
        return windows(self.train, self.block_size, limit=256)[0].to(self.device)

    def to(self, device: torch.device, dtype: torch.dtype) -> "TokenStream":
        """Ids stay integers; validation windows move now, training windows as each batch is drawn."""
        return TokenStream(self.train, self.block_size, self.val_x.to(device), self.val_y.to(device), device)

    def batches(self, batch_size: int, seed: int, *, rank: int = 0, world: int = 1) -> "TokenWindows":
        return TokenWindows(self.train, self.block_size, batch_size, seed, self.device, rank, world)


def windows(ids: np.ndarray, block_size: int, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every non-overlapping window of `ids` (up to `limit`) and its next-id targets, as int64."""
    count = (len(ids) - 1) // block_size if limit is None else min(limit, (len(ids) - 1) // block_size)
    if count == 0:
        raise ConfigError([Problem("data.block_size", f"is {block_size} but the file holds only {len(ids)} ids: no window fits")])
    block = torch.from_numpy(np.asarray(ids[: count * block_size + 1], dtype=np.int64))
    return block[:-1].reshape(count, block_size), block[1:].reshape(count, block_size)


class TokenWindows:
    """Serves training batches of random windows: nanoGPT's get_batch, with each epoch's starts drawn
    from (seed, epoch) so that no sampler state needs saving. Under DDP (`world` > 1) each rank reads
    only its part of every batch's windows, served as a `Shard` (runner.data.loader)."""

    def __init__(self, ids: np.ndarray, block_size: int, batch_size: int, seed: int, device: torch.device, rank: int = 0, world: int = 1):
        self.ids, self.block_size, self.batch_size, self.seed, self.device = ids, block_size, batch_size, seed, device
        self.rank, self.world = rank, world
        self.windows = (len(ids) - 1) // block_size
        self.steps_per_epoch = math.ceil(self.windows / batch_size)

    def starts(self, epoch: int) -> torch.Tensor:
        """Epoch `epoch`'s window starts, uniform over [0, len(ids) - block_size)."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randint(len(self.ids) - self.block_size, (self.windows,), generator=generator)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yields the batches of `epoch` from batch index `start` on."""
        starts = self.starts(epoch).numpy()
        span = self.block_size + 1
        for index in range(start, self.steps_per_epoch):
            chosen = starts[index * self.batch_size : (index + 1) * self.batch_size]
            rows = len(chosen)
            first, stop = rank_part(rows, self.rank, self.world)
            chosen = chosen[first:stop]
            windows = [self.ids[i : i + span] for i in chosen]
            block = torch.from_numpy(np.stack(windows).astype(np.int64) if windows else np.empty((0, span), dtype=np.int64))
            if self.device.type == "cuda":
                block = block.pin_memory().to(self.device, non_blocking=True)
            else:
                block = block.to(self.device)
            x, y = block[:, :-1], block[:, 1:]
            yield Shard(x, y, rows) if self.world > 1 else (x, y)
