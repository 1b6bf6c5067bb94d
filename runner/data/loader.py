"""The training batch servers: `Batches` slices tensors already on the device (`data.loader.num_workers: 0`);
`LoaderBatches` goes through torch's DataLoader, whose worker processes gather and transform whole batches
while the model trains.

The batches are exactly those of the in-memory path (`Batches`): epoch e's order is the permutation
seeded by (seed, e), batch i is its i-th slice, and its random transforms draw from (seed, e, i).
So the sampler hands out batch *descriptions* (epoch, index, sample indices), not samples, and a
worker turns one into a batch: nothing depends on which worker serves it or on worker RNG state,
and a run resumed in the middle of an epoch starts the sampler at the batch it stopped before.

Under torchrun DDP each rank's sampler describes only the rank's contiguous part of every global batch
(`rank_part`, the part the step would slice from the whole batch), so each rank's workers read and
transform only their rank's rows, and the ranks together read each sample once an epoch. A rank's
batch arrives as a `Shard`, which knows its global batch's size (what its loss is scaled by).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from runner.data.transforms import Pipeline, batch_generator

# data.loader.num_workers: auto keeps the data on a CUDA device while it takes at most this share of the
# device's free memory (the rest is the model's, its activations' and the optimizer's), and otherwise
# serves it from host memory through this many workers at most (fewer when the cores are fewer).
DEVICE_SHARE = 0.25
MOST_WORKERS = 4


@dataclass(frozen=True)
class Serving:
    """How a run's training batches are served: the loader settings it runs with, and why."""

    num_workers: int
    pin_memory: bool = False
    persistent_workers: bool = False
    prefetch_factor: int | None = None
    reason: str = "data.loader.num_workers"


def serving(loader: Any, device: torch.device, data_bytes: int, free_bytes: int | None, cores: int, ranks: int,
            in_process: bool = False) -> Serving:
    """Resolves data.loader for a run: a number of workers as given; `auto` by the rule in docs/config.md.

    `data_bytes`: the training and validation tensors at the run's dtype; `free_bytes`: the CUDA device's
    free memory (None elsewhere); `cores`: those this process may use, shared by the `ranks` on this machine; `in_process`: the
    source serves its batches itself (data=tokens' memory-mapped windows)."""
    if loader.num_workers != "auto":
        return Serving(loader.num_workers, loader.pin_memory, loader.persistent_workers, loader.prefetch_factor)
    if in_process:
        return Serving(0, reason="auto: the source reads its own batches (memory-mapped token windows)")
    if device.type != "cuda" or free_bytes is None:
        return Serving(0, reason=f"auto: the data is in this machine's memory already and the model trains on {device.type}; "
                                 "workers would take cores from training")
    if data_bytes <= DEVICE_SHARE * free_bytes:
        return Serving(0, reason=f"auto: the data ({_mib(data_bytes)}) fits in {DEVICE_SHARE:.0%} of {device}'s free memory ({_mib(free_bytes)})")
    workers = max(1, min(MOST_WORKERS, cores // ranks - 1))  # a core a rank left for its training process
    return Serving(workers, pin_memory=True, persistent_workers=True,
                   reason=f"auto: the data ({_mib(data_bytes)}) takes more than {DEVICE_SHARE:.0%} of {device}'s free memory ({_mib(free_bytes)})")


def _mib(size: int) -> str:
    return f"{size / 2**20:,.0f} MiB"


def rank_part(rows: int, rank: int, world: int) -> tuple[int, int]:
    """(start, stop) of rank `rank`'s contiguous part of `rows` rows split over `world` ranks: the first
    `rows % world` ranks take one row more (torch.tensor_split's parts)."""
    size, extra = divmod(rows, world)
    start = rank * size + min(rank, extra)
    return start, start + size + (rank < extra)


class Shard(tuple):
    """A DDP rank's part of a global batch, as the pair (x, y), with `rows`, the global batch's row count."""

    rows: int

    def __new__(cls, x: torch.Tensor, y: torch.Tensor, rows: int) -> "Shard":
        shard = super().__new__(cls, (x, y))
        shard.rows = rows
        return shard

    def __getnewargs__(self) -> tuple:  # copy, deepcopy and pickle rebuild it with its rows
        return (*self, self.rows)


def epoch_order(seed: int, epoch: int, count: int) -> torch.Tensor:
    """Epoch `epoch`'s permutation of `count` sample indices, from (seed, epoch) alone (on the CPU)."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


class Batches:
    """Serves minibatches by slicing tensors shuffled once per epoch, already on the target device.

    The order of epoch e comes from its own seed (seed, e), so a run resumed mid-epoch sees
    exactly the batches an uninterrupted run would have seen, with no generator state to save.
    Under DDP (`world` > 1) each batch is this rank's `Shard` of it, the only rows it transforms.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, transform: Pipeline | None = None,
                 rank: int = 0, world: int = 1):
        self.x, self.y, self.batch_size, self.seed, self.transform = x, y, batch_size, seed, transform
        self.rank, self.world = rank, world
        self.steps_per_epoch = math.ceil(len(x) / batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        """Returns epoch `epoch`'s permutation of the sample indices."""
        return epoch_order(self.seed, epoch, len(self.x)).to(self.x.device)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yields the batches of `epoch` from batch index `start` on."""
        order = self.order(epoch)
        xs, ys = self.x.index_select(0, order), self.y.index_select(0, order)
        size = self.batch_size
        for index in range(start, self.steps_per_epoch):
            rows = min(size, len(xs) - index * size)
            first, stop = rank_part(rows, self.rank, self.world)
            x, y = xs[index * size + first : index * size + stop], ys[index * size + first : index * size + stop]
            if self.transform is not None:
                x = self.transform(x, batch_generator(self.seed, epoch, index), (first, rows) if self.world > 1 else None)
            yield Shard(x, y, rows) if self.world > 1 else (x, y)


class _BatchSource(torch.utils.data.Dataset):
    """Turns a batch description into the batch: rows gathered from the CPU tensors, then transformed."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Pipeline | None, seed: int):
        self.x, self.y, self.transform, self.seed = x, y, transform, seed

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key: tuple[int, int, torch.Tensor, tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index, rows, part = key
        x = self.x.index_select(0, rows)
        if self.transform is not None:
            x = self.transform(x, batch_generator(self.seed, epoch, index), part)
        return x, self.y.index_select(0, rows)


class _EpochBatches(Sampler):
    """Describes the batches of one epoch from a start batch, each as (epoch, index, this rank's sample indices,
    (their first row in the batch, the batch's rows)); `at` chooses which before each pass (one sampler for the
    loader's life, so persistent workers outlive the epoch)."""

    def __init__(self, batch_size: int, count: int, seed: int, rank: int = 0, world: int = 1):
        self.batch_size, self.count, self.seed, self.rank, self.world = batch_size, count, seed, rank, world
        self.steps_per_epoch = math.ceil(count / batch_size)
        self.epoch, self.start = 0, 0

    def at(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start

    def rows(self, index: int) -> int:
        """The rows of global batch `index` (all but an epoch's last have `batch_size`)."""
        return min(self.batch_size, self.count - index * self.batch_size)

    def __iter__(self) -> Iterator[tuple[int, int, torch.Tensor, tuple[int, int]]]:
        order, size = epoch_order(self.seed, self.epoch, self.count), self.batch_size
        for index in range(self.start, self.steps_per_epoch):
            start, stop = rank_part(self.rows(index), self.rank, self.world)
            yield self.epoch, index, order[index * size + start : index * size + stop], (start, self.rows(index))


class LoaderBatches:
    """The DataLoader path of `Batches`: the same `epoch(epoch, start)` and `steps_per_epoch`, batches
    moved to `device` as they arrive (without blocking when pinned); under DDP (`world` > 1) each batch is
    this rank's `Shard` of it."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, transform: Pipeline | None, device: torch.device,
                 num_workers: int, pin_memory: bool = False, persistent_workers: bool = False, prefetch_factor: int | None = None,
                 rank: int = 0, world: int = 1):
        self.device, self.pinned, self.sharded = device, pin_memory, world > 1
        self._sampler = _EpochBatches(batch_size, len(x), seed, rank, world)
        self.steps_per_epoch = self._sampler.steps_per_epoch
        self._loader = DataLoader(
            _BatchSource(x, y, transform, seed), batch_size=None, sampler=self._sampler, num_workers=num_workers,
            pin_memory=pin_memory, persistent_workers=persistent_workers, prefetch_factor=prefetch_factor,
            worker_init_fn=_ignore_interrupts,
        )

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._sampler.at(epoch, start)
        for index, (x, y) in enumerate(self._loader, start):
            x, y = x.to(self.device, non_blocking=self.pinned), y.to(self.device, non_blocking=self.pinned)
            yield Shard(x, y, self._sampler.rows(index)) if self.sharded else (x, y)


def _ignore_interrupts(_worker: int) -> None:
    """In each loader worker: Ctrl-C and SIGTERM reach the whole process group, and a worker they end would fail
    the training process's next batch; the training process stops after its step and ends the workers itself."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
