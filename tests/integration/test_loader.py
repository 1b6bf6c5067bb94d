"""data.loader: with worker processes, torch's DataLoader serves the batches the in-memory path serves
(rows of epoch e's permutation, transformed from (seed, e, batch)), so a run with workers trains to the
same weights, and one resumed in the middle of an epoch with workers is bit-identical."""

from __future__ import annotations

import copy
import pickle
import re

import numpy as np
import pytest
import torch

import runner
from conftest import resumes_bit_identically, run_cli
from runner.data.loader import Batches, LoaderBatches, Shard, serving
from runner.data.sources import load_data
from runner.data.transforms import batch_generator, make_pipeline
from runner.model.distributed import Group
from runner.prepare.plan import validate
from runner.spec.types import LoaderSpec
from runner.training.precision import Precision
from runner.training.step import Step

AUGMENT = ["data.transforms.train=[{name: random_crop, padding: 4}, horizontal_flip, normalize]", "data.transforms.eval=[normalize]"]


def cifar(image_datasets, *overrides: str) -> list[str]:
    return ["data=cifar10", f"data.root={image_datasets['cifar10'][0]}", "model=cnn", "model.vars.channels=3", "model.vars.size=32",
            "trainer.batch_size=8", *overrides]


def test_the_workers_serve_each_epoch_s_rows_in_its_seeded_order_transformed_from_seed_epoch_batch(compose, image_datasets):
    data = load_data(compose(*cifar(image_datasets, "data.transforms.train=[{name: random_crop, padding: 2}, horizontal_flip]")).data)
    served = LoaderBatches(data.train_x, data.train_y, 8, 3, data.transform, torch.device("cpu"), num_workers=2, persistent_workers=True,
                           prefetch_factor=1)
    images = torch.from_numpy(image_datasets["cifar10"][1]["train"][0].astype(np.float32) / np.float32(255))
    labels = torch.from_numpy(image_datasets["cifar10"][1]["train"][1]).long()
    crop_flip = make_pipeline([{"name": "random_crop", "padding": 2}, "horizontal_flip"])
    for epoch, start in ((0, 0), (1, 2), (2, 0)):  # a resumed epoch starts at its batch
        order = torch.randperm(30, generator=torch.Generator().manual_seed(3 * 100_003 + epoch)).tolist()
        got = list(served.epoch(epoch, start))
        assert len(got) == 4 - start  # 30 images, batches of 8
        in_memory = list(data.batches(8, 3).epoch(epoch, start))  # what the docstring promises: the in-memory path's batches
        assert all(torch.equal(a, b) and torch.equal(p, q) for (a, p), (b, q) in zip(got, in_memory, strict=True))
        for index, (x, y) in enumerate(got, start=start):
            rows = order[index * 8 : (index + 1) * 8]
            assert torch.equal(y, labels[rows])
            assert torch.equal(x, crop_flip(images[rows], batch_generator(3, epoch, index)))


def test_a_run_with_workers_trains_to_the_weights_of_the_in_memory_path(compose, image_datasets, tmp_path):
    overrides = cifar(image_datasets, *AUGMENT, "trainer.epochs=2")
    served = []

    class Served(runner.Callback):
        def on_train_start(self, loop):
            served.append(type(loop.batches).__name__)

    alone = runner.train(compose(*overrides), tmp_path / "alone", callbacks=[Served()])
    workers = runner.train(compose(*overrides, "data.loader.num_workers=2", "data.loader.persistent_workers=true"), tmp_path / "workers",
                           callbacks=[Served()])
    assert served == ["Batches", "LoaderBatches"]
    assert workers["weights_sha256"] == alone["weights_sha256"]


def test_a_run_with_workers_resumed_mid_epoch_is_bit_identical(compose, image_datasets, tmp_path):
    overrides = cifar(image_datasets, *AUGMENT, "data.loader.num_workers=2", "trainer.epochs=2", "trainer.ckpt_every=2", "trainer.keep_last=20")
    resumes_bit_identically(compose(*overrides), tmp_path, kept=3)  # 30 images: 4 steps an epoch; steps 2, 4, 6 kept: 6 is mid-epoch


@pytest.mark.parametrize("overrides, words", [
    (["data.loader.pin_memory=true"], "data.loader.pin_memory: takes effect only with a given number of worker processes: "
                                      "set data.loader.num_workers > 0 (auto chooses these itself), or remove it"),
    (["data.loader.num_workers=-1"], "data.loader.num_workers: expected auto or a number >= 0, got -1"),
    (["data.loader.num_workers=2", "data.loader.prefetch_factor=0"], "data.loader.prefetch_factor: expected a number > 0, got 0"),
    (["data.loader.num_workers=2", "data.loader.pin_memory=true"],
     "data.loader.pin_memory: page-locked batches speed copies to a CUDA device (trainer.device is cpu); remove it"),
    (["experiment=nanogpt_chars", "data.root=/nowhere", "data.loader.num_workers=2"],
     "data.loader.num_workers: data=tokens slices its windows from the memory-mapped files in the training process"),
])
def test_bad_loader_settings_exit_2_naming_the_key(tmp_path, overrides, words):
    result = run_cli(*overrides, "trainer.device=cpu", "trainer.max_steps=1", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("override, words", [
    ("data.loader.num_workers=two", "data.loader.num_workers: expected auto or a number >= 0, got 'two'"),
    ("data.loader.num_workers=true", "data.loader.num_workers: expected auto or a number >= 0, got True"),
    ("data.loader.num_workers=1.5", "data.loader.num_workers: expected auto or a number >= 0, got 1.5"),
])
def test_a_worker_count_that_is_neither_auto_nor_a_count_is_refused(compose, override, words):
    with pytest.raises(runner.ConfigError, match=re.escape(words)):
        validate(compose(override))


def test_the_loader_chooses_its_workers_by_the_documented_rule():
    # data.loader.num_workers: auto. Sizes in MiB; the CUDA device's free memory as mem_get_info would give it.
    auto, cpu, cuda = LoaderSpec(), torch.device("cpu"), torch.device("cuda", 0)
    mib = 2**20
    assert serving(auto, cpu, 10_000 * mib, None, cores=64, ranks=1).num_workers == 0  # on the CPU the data stays where it is
    assert serving(auto, cuda, 10_000 * mib, 80_000 * mib, cores=16, ranks=1, in_process=True).num_workers == 0  # token windows
    assert serving(auto, cuda, 2_000 * mib, 8_000 * mib, cores=16, ranks=1).num_workers == 0  # a quarter of the free memory: on the device
    big = serving(auto, cuda, 2_001 * mib, 8_000 * mib, cores=16, ranks=1)  # more than a quarter: from host memory
    assert (big.num_workers, big.pin_memory, big.persistent_workers) == (4, True, True)
    assert serving(auto, cuda, 3_000 * mib, 8_000 * mib, cores=8, ranks=4).num_workers == 1  # 2 cores a rank: one for training
    assert serving(auto, cuda, 3_000 * mib, 8_000 * mib, cores=2, ranks=4).num_workers == 1
    given = serving(LoaderSpec(num_workers=3, prefetch_factor=5), cuda, 1, 8_000 * mib, cores=16, ranks=1)
    assert (given.num_workers, given.pin_memory, given.prefetch_factor) == (3, False, 5)  # a number is taken as given


@pytest.mark.parametrize("world, workers", [(2, 0), (3, 1)])
def test_under_ddp_each_rank_s_workers_read_and_augment_only_its_part_of_each_batch(compose, image_datasets, world, workers):
    # What each rank's loader serves is exactly its slice (tensor_split) of the whole batch the in-memory path
    # serves and augments: the random crops and flips drawn for the whole batch, each image keeping its own.
    data = load_data(compose(*cifar(image_datasets, "data.transforms.train=[{name: random_crop, padding: 2}, horizontal_flip]")).data)
    ranks = [LoaderBatches(data.train_x, data.train_y, 8, 3, data.transform, torch.device("cpu"), num_workers=workers, rank=rank, world=world)
             for rank in range(world)]
    for epoch, start in ((0, 0), (1, 2)):
        whole = list(data.batches(8, 3).epoch(epoch, start))
        served = [list(batches.epoch(epoch, start)) for batches in ranks]
        in_memory = [list(data.batches(8, 3, rank=rank, world=world).epoch(epoch, start)) for rank in range(world)]
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a.rows == b.rows
                   for mine, theirs in zip(served, in_memory) for a, b in zip(mine, theirs, strict=True))  # both paths: the same shards
        for index, (x, y) in enumerate(whole):
            for rank in range(world):
                shard = served[rank][index]
                assert isinstance(shard, Shard) and shard.rows == len(x)  # 8, and 30 - 3 * 8 = 6 for the last batch
                assert torch.equal(shard[0], x.tensor_split(world)[rank]) and torch.equal(shard[1], y.tensor_split(world)[rank])
        read = torch.cat([shard[1] for batches in served for shard in batches])
        assert len(read) == sum(len(y) for _, y in whole)  # no row read twice, none left out


def test_a_shard_keeps_its_global_rows_through_copy_and_pickle():
    shard = Shard(torch.arange(6.0).reshape(3, 2), torch.arange(3), rows=7)
    for twin in (copy.copy(shard), copy.deepcopy(shard), pickle.loads(pickle.dumps(shard))):
        assert isinstance(twin, Shard) and twin.rows == 7 and torch.equal(twin[0], shard[0]) and torch.equal(twin[1], shard[1])


def test_a_rank_s_loss_on_its_shard_is_scaled_by_its_part_of_the_global_batch():
    # Step weighs a Shard by its global batch's rows (bit for bit the arithmetic below); a callback's plain (x, y) under
    # DDP weighs as one of `world` equal parts, as in plain DDP.
    torch.manual_seed(0)
    net, x, y = torch.nn.Linear(4, 3), torch.randn(7, 4), torch.randint(0, 3, (7,))
    step = Step(net, net, torch.nn.functional.cross_entropy, torch.optim.SGD(net.parameters(), lr=0.1), None, list(net.parameters()), None,
                Precision(None, torch.device("cpu"), None), None, None, Group(1, 2))
    read = step._loss(net, x[4:], y[4:], 7 / 10, 7)  # rank 1 of 2 takes rows 4..6 of 7
    expected = torch.nn.functional.cross_entropy(net(x[4:]), y[4:]) * (7 / 10 * (3 / 7 * 2))
    assert torch.equal(read, expected)
    assert step.sizes([Shard(x[4:], y[4:], 7), (x[4:], y[4:])]) == [7, 6]


def test_a_rank_whose_part_of_a_batch_is_empty_adds_a_zero_loss_and_zero_gradients():
    # A global batch of 1 row over 2 ranks leaves rank 1 nothing: its loss is 0 and its gradients 0, not NaN (a mean over no rows).
    net = torch.nn.Linear(4, 3)
    step = Step(net, net, torch.nn.functional.cross_entropy, torch.optim.SGD(net.parameters(), lr=0.1), None, list(net.parameters()), None,
                Precision(None, torch.device("cpu"), None), None, None, Group(1, 2))
    (served,) = Batches(torch.randn(1, 4), torch.tensor([2]), 1, seed=0, rank=1, world=2).epoch(0)
    for x, y, rows in ((served[0], served[1], served.rows), (torch.randn(0, 4), torch.zeros(0, dtype=torch.long), 3)):
        assert len(x) == 0
        net.zero_grad()
        loss = step._loss(net, x, y, 1.0, rows)
        loss.backward()
        assert loss.item() == 0.0 and all(torch.equal(p.grad, torch.zeros_like(p)) for p in net.parameters())
