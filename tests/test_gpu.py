"""CUDA placement: tensors, ties and buffers on the GPU, and CPU/CUDA builds of one seed start identical."""

from __future__ import annotations

import pytest
import torch

import runner
from runner.prepare import prepare
from runner.plan import validate
from runner.tensors import verify_ties
from conftest import model_choice

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
