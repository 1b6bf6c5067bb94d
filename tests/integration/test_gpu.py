"""CUDA placement: tensors, ties and buffers on the GPU, and CPU/CUDA builds of one seed start identical."""

from __future__ import annotations

import pytest
import torch

import runner
from conftest import model_choice
from runner.model.tensors import verify_ties
from runner.prepare.plan import validate
from runner.prepare.prepare import prepare

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("model", ["transformer_lm", "autoencoder", "cnn", "frozen_features"])
def test_everything_lands_on_cuda_and_ties_hold(compose, model):
    prepared = prepare(validate(compose(model_choice(model), "trainer.device=cuda")))
    tensors = list(prepared.model.parameters()) + list(prepared.model.buffers())
    assert {t.device.type for t in tensors} == {"cuda"}
    verify_ties(prepared.model, prepared.ties)


def test_cpu_and_cuda_builds_of_one_seed_start_identical(compose):
    cpu = runner.build(compose("init=xavier", "trainer.device=cpu"))
    cuda = runner.build(compose("init=xavier", "trainer.device=cuda"))
    for (name, a), b in zip(cpu.state_dict().items(), cuda.state_dict().values()):
        assert torch.equal(a, b.cpu()), name


def test_training_on_cuda(compose, tmp_path):
    summary = runner.train(compose("experiment=transformer_lm", "trainer.device=cuda", "trainer.max_steps=20"), tmp_path)
    assert summary["device"].startswith("cuda") and summary["steps"] == 20


@pytest.mark.parametrize("autocast", ["bfloat16", "float16"])
def test_autocast_on_cuda_trains_and_resumes_exactly(compose, tmp_path, autocast):
    overrides = ("trainer.device=cuda", f"trainer.autocast={autocast}", "trainer.max_steps=30", "trainer.ckpt_every=10", "trainer.keep_last=5")
    full = runner.train(compose(*overrides), tmp_path / "full")
    assert full["autocast"] == autocast and full["val_loss"] < 2.3  # ln(10): it learned something
    assert (full["skipped_steps"] is not None) == (autocast == "float16")
    import shutil

    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step_0000030")
    resumed = runner.resume(tmp_path / "cut")
    assert resumed["weights_sha256"] == full["weights_sha256"]


@pytest.mark.parametrize("model", ["mlp", "frozen_features", "nanogpt"])
def test_every_observer_on_cuda_matches_the_cpu_run(compose, tmp_path, model):
    """Statistics, activations, histograms, EMA, best-keeping and early stopping all run on CUDA; the losses they log
    agree with the same run on the CPU (float32, so to a tolerance, not bitwise)."""
    observe = ("trainer.max_steps=24", "trainer.log_every=4", "trainer.grad_stats=true", "trainer.activation_stats=true",
               "trainer.tensorboard=true", "trainer.hist_every=8", "trainer.ema_decay=0.9", "trainer.keep_best=true",
               "trainer.ckpt_every=8", "+trainer.early_stopping.patience=5")
    runs = {}
    for device in ("cpu", "cuda"):
        runs[device] = runner.train(compose(model_choice(model), f"trainer.device={device}", *observe), tmp_path / device)
    assert runs["cuda"]["device"].startswith("cuda") and runs["cuda"]["steps"] == 24
    assert runs["cuda"]["val_loss"] == pytest.approx(runs["cpu"]["val_loss"], rel=1e-3)


def test_the_cli_trains_on_cuda_by_default(tmp_path):
    """`python -m runner` with trainer.device=auto picks the GPU."""
    import json
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "runner", "trainer.epochs=1", f"hydra.run.dir={tmp_path}", "trainer.progress=off"],
                   check=True, capture_output=True, text=True)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["device"].startswith("cuda")


def test_auto_serves_data_too_big_for_the_device_through_pinned_workers_to_the_same_weights(compose, tmp_path, monkeypatch):
    # data.loader.num_workers: auto. With no device memory to spare for the data, the run serves it from host memory
    # through workers (pinned, persistent), and trains to the weights of the run whose data stays on the device.
    from runner.data import loader

    served = []

    class Served(runner.Callback):
        def on_train_start(self, loop):
            served.append((type(loop.batches).__name__, loop.batches.pinned if hasattr(loop.batches, "pinned") else None))

    overrides = ("trainer.device=cuda", "trainer.max_steps=30")
    kept = runner.train(compose(*overrides), tmp_path / "kept", callbacks=[Served()])
    monkeypatch.setattr(loader, "DEVICE_SHARE", 0.0)
    streamed = runner.train(compose(*overrides), tmp_path / "streamed", callbacks=[Served()])
    assert served == [("Batches", None), ("LoaderBatches", True)]
    assert streamed["weights_sha256"] == kept["weights_sha256"]
