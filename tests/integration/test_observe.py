"""Observability off the training thread: activation statistics, trainer.watch, the writer thread,
TensorBoard events and histograms as TensorBoard's own reader sees them, background checkpoints."""

from __future__ import annotations

import copy
import errno
import os

import numpy as np
import pytest
import torch

import runner
from runner.errors import ConfigError
from runner.prepare.plan import validate
from runner.prepare.prepare import prepare
from runner.run import checkpoint
from runner.run import writer as observe
from runner.run.directory import RunDirWriteError, read_metrics
from runner.training import run as training


def _first_batch(prepared) -> torch.Tensor:
    """The first training batch, drawn as the documented order says (not through the runner's Batches)."""
    x = prepared.data.train_x
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(prepared.spec.seed * 100_003))
    return x[order[: prepared.spec.trainer.batch_size]]


def _train(compose, tmp_path, *overrides):
    prepared = prepare(validate(compose(*overrides)))
    initial = copy.deepcopy(prepared.model)
    training.run_training(prepared, tmp_path)
    return initial, read_metrics(tmp_path / "metrics.jsonl")


def _mean_std(t: torch.Tensor) -> tuple[float, float]:
    return t.mean().item(), t.std(unbiased=False).item()


def test_activation_statistics_equal_a_hand_written_forward_pass(compose, tmp_path):
    initial, records = _train(compose, tmp_path, "trainer.max_steps=1", "trainer.log_every=1")
    p = dict(initial.named_parameters())
    x = _first_batch(prepare(validate(compose("trainer.max_steps=1"))))
    fc1 = x @ p["fc1.weight"].T + p["fc1.bias"]
    act1 = fc1.clamp_min(0)
    fc2 = act1 @ p["fc2.weight"].T + p["fc2.bias"]
    act2 = fc2.clamp_min(0)
    head = act2 @ p["head.weight"].T + p["head.bias"]
    record = next(r for r in records if r["kind"] == "train")
    for name, value in {"fc1": fc1, "act1": act1, "fc2": fc2, "act2": act2, "head": head}.items():
        mean, std = _mean_std(value)
        assert record[f"act_mean/{name}"] == pytest.approx(mean, rel=1e-5, abs=1e-7), name
        assert record[f"act_std/{name}"] == pytest.approx(std, rel=1e-5), name
    assert sorted(k for k in record if k.startswith("act_")) == sorted(
        f"act_{s}/{n}" for s in ("mean", "std") for n in ("fc1", "act1", "fc2", "act2", "head"))


def test_a_module_called_twice_is_reported_over_both_outputs(compose, tmp_path):
    initial, records = _train(compose, tmp_path, "model=tied_mlp", "trainer.max_steps=1", "trainer.log_every=1")
    p = dict(initial.named_parameters())
    x = _first_batch(prepare(validate(compose("model=tied_mlp"))))
    a1 = (x @ p["fc_in.weight"].T + p["fc_in.bias"]).clamp_min(0)
    s1 = a1 @ p["shared.weight"].T + p["shared.bias"]
    s2 = s1.clamp_min(0) @ p["shared.weight"].T + p["shared.bias"]
    record = next(r for r in records if r["kind"] == "train")
    mean, std = _mean_std(torch.cat([s1, s2]))
    assert record["act_mean/shared"] == pytest.approx(mean, rel=1e-5, abs=1e-7)
    assert record["act_std/shared"] == pytest.approx(std, rel=1e-5)
    assert "act_std/shared_again" not in record  # one module, one key


@pytest.mark.parametrize("init, vanishes", [("normal", True), ("xavier_gain", False)])
def test_activations_vanish_under_small_normal_init_and_not_under_xavier_gain(compose, tmp_path, init, vanishes):
    _, records = _train(compose, tmp_path, "model=nested", f"init={init}", "trainer.max_steps=1", "trainer.log_every=1")
    record = next(r for r in records if r["kind"] == "train")
    stem, last = record["act_std/stem"], record["act_std/blocks.3.fc2"]
    # N(0, 0.01^2) weights scale the std by about 0.01 * sqrt(fan_in / 2) < 0.06 per Linear after a ReLU:
    # eight Linears take it down by many orders; Glorot's scheme scaled by ReLU's gain sqrt(2) keeps it within
    # a small factor (at gain 1, init=xavier, each ReLU halves the variance: about 1/16 of the std after eight).
    if vanishes:
        assert last / stem < 1e-6
    else:
        assert 0.1 < last / stem < 10


class _Hooks(runner.Callback):
    """During each step's forward pass (from the model's first layer) and after it: are activation hooks attached?"""

    def __init__(self):
        self.during, self.after = [], []

    def on_train_start(self, loop):
        first = next(m for m in loop.model.modules() if not list(m.children()))
        first.register_forward_pre_hook(lambda module, args: self.during.append(len(module._forward_hooks) > 0))

    def on_step_end(self, loop, step):
        self.after.append(any(m._forward_hooks for m in loop.model.modules()))


def test_hooks_exist_only_on_logged_steps(compose, tmp_path):
    hooks = _Hooks()
    prepared = prepare(validate(compose("trainer.max_steps=12", "trainer.log_every=5")))
    training.run_training(prepared, tmp_path, callbacks=[hooks])
    hooked = [step for step, on in enumerate(hooks.during[:12], start=1) if on]
    assert hooked == [1, 5, 10] and not any(hooks.after)


def test_activation_stats_off_writes_none(compose, tmp_path):
    _, records = _train(compose, tmp_path, "trainer.max_steps=2", "trainer.log_every=1", "trainer.activation_stats=false")
    assert not any(k.startswith("act_") for r in records for k in r)


def test_watch_limits_statistics_and_histograms_but_not_the_global_norm(compose, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, everything = _train(compose, tmp_path / "all", "trainer.max_steps=5", "trainer.log_every=5")
    _, watched = _train(compose, tmp_path / "fc1", "trainer.max_steps=5", "trainer.log_every=5", "trainer.watch=[fc1]",
                        "trainer.tensorboard=true", "trainer.hist_every=5")
    full, some = (next(r for r in records if r["kind"] == "train") for records in (everything, watched))
    assert {k for k in some if "/" in k} == {f"{s}/fc1.{t}" for s in ("grad_norm", "grad_max", "weight_norm", "update_ratio")
                                             for t in ("weight", "bias")} | {"act_mean/fc1", "act_std/fc1"}
    assert some["grad_norm"] == full["grad_norm"]  # over every trainable tensor, watched or not
    assert some["act_std/fc1"] == full["act_std/fc1"] and some["grad_norm/fc1.weight"] == full["grad_norm/fc1.weight"]
    events = EventAccumulator(str(tmp_path / "fc1"), size_guidance={"histograms": 0}).Reload()
    assert set(events.Tags()["histograms"]) == {"weights/fc1.weight", "weights/fc1.bias", "grads/fc1.weight", "grads/fc1.bias"}


def test_a_watch_glob_selects_everything_inside_a_module_it_names(compose):
    plan = validate(compose("model=nested", "trainer.watch=[blocks.1]"))
    assert plan.watch.layers == ("blocks.1.fc1", "blocks.1.act1", "blocks.1.fc2", "blocks.1.act2")
    assert plan.watch.tensors == {f"blocks.1.{l}.{t}" for l in ("fc1", "fc2") for t in ("weight", "bias")}


def test_bad_watch_and_activation_stats_values_are_named(compose):
    with pytest.raises(ConfigError) as raised:
        validate(compose("trainer.watch=[fc9, '']", "trainer.activation_stats=sometimes"))
    message = str(raised.value)
    assert "trainer.watch[0]: 'fc9' matches no layer or tensor" in message and "did you mean" in message
    assert "trainer.watch[1]" in message
    assert "trainer.activation_stats: expected true or false, got 'sometimes'" in message


def test_histograms_as_tensorboard_reads_them_match_numpy(compose, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    prepared = prepare(validate(compose("trainer.max_steps=4", "trainer.hist_every=4", "trainer.tensorboard=true")))
    training.run_training(prepared, tmp_path)
    events = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0}).Reload()
    for name, tensor in prepared.model.named_parameters():  # the last step's histograms hold the final weights
        value = events.Histograms(f"weights/{name}")[-1].histogram_value
        w = tensor.detach().double().numpy().reshape(-1)
        assert (value.min, value.max, value.num) == (pytest.approx(w.min()), pytest.approx(w.max()), w.size)
        assert value.sum == pytest.approx(w.sum(), abs=1e-6) and value.sum_squares == pytest.approx((w * w).sum(), rel=1e-6)
        counts, edges = np.histogram(w, bins=observe.HISTOGRAM_BINS, range=(w.min(), w.max()))
        assert sum(value.bucket) == w.size
        assert np.abs(np.array(value.bucket) - counts).sum() <= 4  # float32 rounding at bin edges
        assert value.bucket_limit == pytest.approx(list(edges[1:]))


def test_metrics_lines_are_written_whole(compose, tmp_path, monkeypatch):
    chunks = []
    real = os.write

    def write(fd, data):
        chunks.append(bytes(data))
        return real(fd, data)

    monkeypatch.setattr(observe.os, "write", write)
    _train(compose, tmp_path, "trainer.max_steps=30", "trainer.log_every=1")
    assert chunks and all(chunk.endswith(b"\n") for chunk in chunks)


def test_a_write_that_fails_on_the_writer_thread_stops_training_with_the_file_named(compose, tmp_path, monkeypatch):
    def full(fd, data):  # as os.write raises it: no file name
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(observe.os, "write", full)
    with pytest.raises(RunDirWriteError) as raised:
        training.run_training(prepare(validate(compose("trainer.max_steps=50", "trainer.log_every=1"))), tmp_path)
    assert raised.value.path == tmp_path / "metrics.jsonl" and "No space left on device" in str(raised.value)


def test_a_background_checkpoint_holds_the_weights_of_its_own_step(compose, tmp_path, monkeypatch):
    real = checkpoint.write_snapshot

    def slow(directory, snap, keep_last):  # training runs on while the write is in flight
        import time

        time.sleep(0.05)
        return real(directory, snap, keep_last)

    monkeypatch.setattr(checkpoint, "write_snapshot", slow)
    runner.train(compose("trainer.max_steps=30", "trainer.ckpt_every=10", "trainer.keep_last=5"), tmp_path / "run")
    runner.train(compose("trainer.max_steps=10"), tmp_path / "short")
    # Every 10 steps, and at the end of epoch 0 (23 steps of digits).
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "run" / "checkpoints")] == ["step_0000010", "step_0000020", "step_0000023",
                                                                                             "step_0000030"]
    at_10, at_30 = runner.load(tmp_path / "short"), runner.load(tmp_path / "run")
    saved = copy.deepcopy(at_10)
    checkpoint.load_weights(tmp_path / "run" / "checkpoints" / "step_0000010", saved)

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

    assert same(saved, at_10) and not same(at_10, at_30)  # step 10's weights, not those of a later step


def test_checkpoints_requested_faster_than_written_are_all_written(compose, tmp_path, monkeypatch):
    real = checkpoint.write_snapshot

    def slow(directory, snap, keep_last):
        import time

        time.sleep(0.02)  # longer than a step: each submit finds the previous write in flight
        return real(directory, snap, keep_last)

    monkeypatch.setattr(checkpoint, "write_snapshot", slow)
    runner.train(compose("trainer.max_steps=8", "trainer.ckpt_every=1", "trainer.keep_last=100"), tmp_path)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "checkpoints")] == [f"step_{s:07d}" for s in range(1, 9)]


def test_packed_snapshot_bytes_equal_safetensors_own_writer():
    from safetensors.torch import load, save

    tensors = {"w": torch.randn(3, 4), "step": torch.tensor(7.0), "ids": torch.arange(5), "mask": torch.tensor([True, False]),
               "half": torch.randn(6, dtype=torch.bfloat16), "f16": torch.randn(2, dtype=torch.float16), "empty": torch.zeros(0, 3),
               "t": torch.randn(4, 3).T, "every_other": torch.randn(8)[::2], "f64": torch.randn(3, dtype=torch.float64),
               "i32": torch.arange(3, dtype=torch.int32), "i8": torch.arange(3, dtype=torch.int8), "u8": torch.arange(3, dtype=torch.uint8)}
    packed = checkpoint.pack(tensors, {"ties": "{}"})
    data = packed.header + packed.data.numpy().tobytes()
    assert data == save({k: v.contiguous() for k, v in tensors.items()}, metadata={"ties": "{}"})
    assert all(torch.equal(load(data)[k], v) for k, v in tensors.items())
    tensors["w"].add_(1)  # a later in-place update does not reach the snapshot
    assert not torch.equal(load(data)["w"], tensors["w"])


def test_the_layer_behind_a_transposed_tie_gets_activation_statistics(compose):
    plan = validate(compose("experiment=autoencoder"))
    assert plan.watch.layers == ("enc", "act", "dec")


def test_a_resumed_run_replaces_the_tensorboard_points_after_its_checkpoint(compose, tmp_path):
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    overrides = ("trainer.max_steps=20", "trainer.log_every=5", "trainer.ckpt_every=10", "trainer.tensorboard=true")
    runner.train(compose(*overrides), tmp_path)
    shutil.rmtree(tmp_path / "checkpoints" / "step_0000020")
    (tmp_path / "summary.json").unlink()
    runner.resume(tmp_path)
    events = EventAccumulator(str(tmp_path)).Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 5, 10, 15, 20]
    logged = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"}
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([logged[s] for s in (1, 5, 10, 15, 20)])


def test_an_interrupt_mid_run_leaves_no_writer_or_saver_thread(compose, tmp_path, monkeypatch):
    import threading

    class Interrupt(runner.Callback):
        def on_step_start(self, loop, step, batches):
            if step == 8:
                raise KeyboardInterrupt
            return batches

    with pytest.raises(KeyboardInterrupt):
        training.run_training(prepare(validate(compose("trainer.max_steps=20", "trainer.ckpt_every=2", "trainer.log_every=1",
                                                       "trainer.tensorboard=true"))), tmp_path, callbacks=[Interrupt()])
    assert not [t.name for t in threading.enumerate() if t.name.startswith("runner-")]
    steps = [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == list(range(1, 8))  # every record handed over before the interrupt is written
    assert checkpoint.latest_checkpoint(tmp_path).name == "step_0000006"
