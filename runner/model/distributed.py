"""One run on several processes with torch DistributedDataParallel, as launched by torchrun.

Each step every rank takes its contiguous shard of the same global batch (the batch servers read each rank
only its part: runner.data.loader.rank_part); its mean loss is scaled by (shard rows / global rows) *
world size, so DDP's gradient average is exactly the gradient of the global batch's mean loss (uneven
last batches included). Rank 0 alone writes.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Group:
    """This process's place in the run: rank, world size, and whether it is the one that writes."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def scale(self, part: int, rows: int) -> float:
        """The factor a rank's mean loss over `part` of a global batch's `rows` rows is scaled by: DDP then averages
        the ranks' gradients into exactly the gradient of the global batch's mean loss."""
        return part / rows * self.world


    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """Returns the mean of `values` over ranks (a collective: every rank must call it)."""
        if not self.active:
            return values
        values = values.clone()
        dist.all_reduce(values)
        return values / self.world


def current_rank() -> int:
    """Returns RANK as torchrun sets it (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def launched_group(strategy: str) -> Group:
    """This process's place in the run as torchrun launched it (RANK, WORLD_SIZE), before it joins the group:
    what `setup` will return, known before anything that may fail on one rank alone."""
    if strategy != "ddp":
        return Group()
    return Group(current_rank(), int(os.environ.get("WORLD_SIZE", "1")))


def setup(strategy: str, device: torch.device) -> Group:
    """Joins the process group for `ddp` (gloo on the CPU, nccl on CUDA); a single process otherwise."""
    if strategy != "ddp":
        return Group()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Group(dist.get_rank(), dist.get_world_size())


def ddp_device(device: torch.device, strategy: str) -> torch.device:
    """Returns the device for this rank: cuda:LOCAL_RANK under ddp on CUDA, else `device`."""
    if strategy == "ddp" and device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def wrap(model: nn.Module, group: Group, device: torch.device, unused_parameters: bool = False) -> nn.Module:
    """Returns the module the step calls: DDP around the model when distributed, the model otherwise.

    `unused_parameters`: some parameters get no gradient (a layer with `call: false`); DDP must then
    look for them after each backward pass instead of waiting for their all-reduce forever."""
    if not group.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=unused_parameters)


def teardown(group: Group, wait: float = 60.0) -> None:
    """Leaves the process group once every rank is done. destroy_process_group can hang at random on some
    rank after a clean run (pytorch/pytorch#75097; seen here twice in ~10 runs of the suite's torchrun tests),
    so it runs on a thread of its own and the process goes on after `wait` seconds, saying so."""
    if group.active and dist.is_initialized():
        dist.barrier()
        leaving = threading.Thread(target=dist.destroy_process_group, name="runner-destroy-process-group", daemon=True)
        leaving.start()
        leaving.join(wait)
        if leaving.is_alive():
            logging.getLogger("runner").warning("rank %d: torch.distributed.destroy_process_group did not return in %gs; exiting without it",
                                                group.rank, wait)
