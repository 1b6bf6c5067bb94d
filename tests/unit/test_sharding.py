"""Under torchrun DDP each rank is served its own rows of every global batch (Batches' rank part): over an
epoch the ranks together see each training sample exactly once, and no two ranks share one. (The
2-process runs in test_sweeps.py end with the single-process run's weights.)"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from runner.data.loader import Batches


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("samples, batch_size", [(30, 8), (64, 16), (7, 4)])
def test_the_ranks_see_each_sample_once_per_epoch(world, samples, batch_size):
    ids = torch.arange(samples)
    ranks = [Batches(ids[:, None].float(), ids, batch_size, seed=4, rank=rank, world=world) for rank in range(world)]
    for epoch in (0, 1):
        seen = {rank: [] for rank in range(world)}
        for rank in range(world):
            for _, rows in ranks[rank].epoch(epoch):
                seen[rank] += rows.tolist()
        counts = Counter(i for rows in seen.values() for i in rows)
        assert counts == Counter(range(samples))  # every sample once, over all ranks
        assert all(not set(seen[a]) & set(seen[b]) for a in range(world) for b in range(a + 1, world))
