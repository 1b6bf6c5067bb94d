"""trainer.threads=0 (the default) chooses the torch threads from the model's size (issue 24, item 12)."""

from __future__ import annotations

import pytest
import torch

import runner
from runner.prepare.plan import SMALL_MODEL


class SeeThreads(runner.Callback):
    """Records the torch threads the loop trains with."""

    def on_train_start(self, loop):
        self.threads = torch.get_num_threads()


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()  # the suite runs with 1 (tests/conftest.py); a user's process has one per core
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


WIDE = ["model.layers.fc1.out_features=2048", "model.layers.fc2.in_features=2048"]  # 64*2048 + 2048 + 2048*64 + 64 + 64*10 + 10


@pytest.mark.parametrize(("overrides", "parameters", "threads"), [
    ([], 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10, 1),  # the default mlp: one thread
    (WIDE, 64 * 2048 + 2048 + 2048 * 64 + 64 + 64 * 10 + 10, 2),  # over SMALL_MODEL: torch's default, left as it is
    (["trainer.threads=2"], 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10, 2),  # set: as given
])
def test_the_default_threads_follow_the_model_size_and_trainer_threads_overrides(compose, tmp_path, two_threads, overrides, parameters, threads):
    seen = SeeThreads()
    summary = runner.train(compose("trainer.max_steps=2", *overrides), tmp_path, callbacks=[seen])
    assert summary["parameters"]["unique"] == parameters
    assert seen.threads == threads
    if "trainer.threads=2" not in overrides:
        assert (parameters < SMALL_MODEL) == (threads == 1)
    assert torch.get_num_threads() == 2  # the caller's setting, put back
