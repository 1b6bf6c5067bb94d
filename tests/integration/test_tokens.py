"""data=tokens: flat binary files of token ids (nanoGPT's train.bin / val.bin) written here with
numpy's tofile, read back through the window sampler and compared with the documented rule computed
on the file's bytes; a resumed run mid-epoch is bit-identical; bad files name the key."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import runner
from conftest import resumes_bit_identically
from runner.data.loader import Shard
from runner.data.sources import load_data


@pytest.fixture
def stream(tmp_path):
    rng = np.random.default_rng(1)
    train, val = rng.integers(0, 65, 1000).astype(np.uint16), rng.integers(0, 65, 300).astype(np.uint16)
    train.tofile(tmp_path / "train.bin")
    val.tofile(tmp_path / "val.bin")
    return tmp_path, train, val


def tokens(root, *overrides: str) -> list[str]:
    return ["experiment=nanogpt_chars", f"data.root={root}", "data.block_size=16", *overrides]


def test_windows_are_nanogpt_s_get_batch_drawn_per_epoch_from_the_seed(compose, stream):
    root, train, val = stream
    data = load_data(compose(*tokens(root)).data)
    # Validation: every non-overlapping window of val.bin, the targets one id later.
    count = (300 - 1) // 16
    assert torch.equal(data.val_x, torch.tensor(val[: count * 16].astype(np.int64)).reshape(count, 16))
    assert torch.equal(data.val_y, torch.tensor(val[1 : count * 16 + 1].astype(np.int64)).reshape(count, 16))
    # Training: epoch e's (len - 1) // block_size starts, uniform in [0, len - block_size), from seed * 100003 + e.
    batches = data.batches(8, seed=5)
    windows = (1000 - 1) // 16
    assert batches.steps_per_epoch == -(-windows // 8)
    for epoch in (0, 1):
        starts = torch.randint(1000 - 16, (windows,), generator=torch.Generator().manual_seed(5 * 100_003 + epoch))
        drawn = list(batches.epoch(epoch))
        x = torch.cat([b[0] for b in drawn])
        y = torch.cat([b[1] for b in drawn])
        assert torch.equal(x, torch.stack([torch.from_numpy(train[s : s + 16].astype(np.int64)) for s in starts.tolist()]))
        assert torch.equal(y, torch.stack([torch.from_numpy(train[s + 1 : s + 17].astype(np.int64)) for s in starts.tolist()]))
    assert [torch.equal(a[0], b[0]) for a, b in zip(list(batches.epoch(0))[3:], batches.epoch(0, start=3))] == [True] * (len(drawn) - 3)


@pytest.mark.parametrize("world", [2, 3])
def test_under_ddp_each_rank_reads_only_its_part_of_every_batch_s_windows(compose, stream, world):
    # 62 windows in batches of 8: the last batch holds 6. Each rank's part is its tensor_split slice of the whole batch.
    root, _, _ = stream
    data = load_data(compose(*tokens(root)).data)
    whole = list(data.batches(8, seed=5).epoch(1, start=2))
    parts = [list(data.batches(8, seed=5, rank=rank, world=world).epoch(1, start=2)) for rank in range(world)]
    for index, (x, y) in enumerate(whole):
        for rank in range(world):
            shard = parts[rank][index]
            assert isinstance(shard, Shard) and shard.rows == len(x)
            assert torch.equal(shard[0], x.tensor_split(world)[rank]) and torch.equal(shard[1], y.tensor_split(world)[rank])


def test_uint32_ids_are_read_as_uint32(compose, tmp_path):
    ids = np.array([0, 70_000, 69_999, 5] * 20, dtype=np.uint32)
    ids.tofile(tmp_path / "train.bin")
    ids.tofile(tmp_path / "val.bin")
    data = load_data(compose(*tokens(tmp_path, "data.dtype=uint32", "data.vocab_size=70001", "data.block_size=4")).data)
    assert data.val_x[0].tolist() == [0, 70_000, 69_999, 5] and data.val_y[0].tolist() == [70_000, 69_999, 5, 0]


def test_a_run_resumed_mid_epoch_is_bit_identical(compose, stream, tmp_path):
    overrides = tokens(stream[0], "trainer.epochs=2", "trainer.batch_size=8", "trainer.ckpt_every=3", "trainer.keep_last=20")  # 8 steps an epoch
    full = resumes_bit_identically(compose(*overrides), tmp_path, kept=2)  # steps 3 and 6 kept: mid-epoch
    assert full["steps"] == 16


@pytest.mark.parametrize("change, key, words", [
    (lambda root: (root / "val.bin").unlink(), "data.root", "has no val.bin"),
    (lambda root: (root / "train.bin").write_bytes(b"\x01\x00\x02"), "data.dtype", "{root}/train.bin holds 3 bytes, not a whole number of uint16 ids (2 bytes each)"),
    (lambda root: np.array([3, 64, 65, 1], np.uint16).tofile(root / "val.bin"), "data.vocab_size", "is 65 but {root}/val.bin holds id 65"),
    (lambda root: np.array([3, 4], np.uint16).tofile(root / "val.bin"), "data.block_size", "is 16 but the file holds only 2 ids: no window fits"),
])
def test_bad_token_files_name_the_key(compose, stream, change, key, words):
    root = stream[0]
    change(root)
    with pytest.raises(runner.ConfigError) as caught:
        load_data(compose(*tokens(root)).data)
    assert f"{key}: {words.format(root=root)}" in str(caught.value)


def test_a_token_stream_is_a_language_model_s_data(compose, stream):
    with pytest.raises(runner.ConfigError) as caught:
        runner.build(compose(*tokens(stream[0], "data.task=classification", "data.num_features=8", "data.dtype=int16")))
    message = str(caught.value)
    assert "data.task: data.name=tokens is next-token prediction: expected language_model, got 'classification'" in message
    assert "data.num_features: is 8 but data.block_size is 16" in message
    assert "data.dtype: expected one of uint16, uint32, got 'int16'" in message
