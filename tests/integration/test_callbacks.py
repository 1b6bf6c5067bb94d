"""The callback interface (runner.Callback): hooks, stopping, and state that a checkpoint keeps by the callback's name."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import runner
from runner.run import checkpoint


class Counter(runner.Callback):
    """Counts the optimizer steps it has seen, across resumes."""

    def __init__(self):
        self.steps = 0

    def on_step_end(self, loop, step):
        self.steps += 1

    def state_dict(self):
        return {"steps": torch.tensor(self.steps)}

    def load_state_dict(self, state):
        self.steps = int(state["steps"]) if "steps" in state else 0


def _cut_to(run_dir, step: int) -> None:
    """Removes the checkpoints after `step`, as a run killed there would have left them."""
    for path in (run_dir / "checkpoints").iterdir():
        if int(path.name.split("_")[1]) > step:
            shutil.rmtree(path)


def test_a_callbacks_state_is_saved_under_its_name_and_comes_back_on_resume(compose, tmp_path):
    overrides = ("trainer.max_steps=30", "trainer.ckpt_every=10", "trainer.keep_last=5")
    full = Counter()
    runner.train(compose(*overrides), tmp_path / "full", callbacks=[full])
    assert full.steps == 30
    stored = load_file(tmp_path / "full" / "checkpoints" / "step_0000020" / "optimizer.safetensors")  # safetensors' own reader
    assert int(stored["counter.steps"]) == 20
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    _cut_to(tmp_path / "cut", 20)
    resumed = Counter()
    runner.resume(tmp_path / "cut", callbacks=[resumed])
    assert resumed.steps == 30  # 20 restored, 10 seen


def test_a_callback_can_stop_the_run_after_an_evaluation(compose, tmp_path):
    class StopAfterFirstEval(runner.Callback):
        def on_eval(self, loop, record):
            loop.stop(f"seen val_loss {record['val_loss']:.3f}")

    stopped = runner.train(compose("trainer.epochs=3"), tmp_path / "stopped", callbacks=[StopAfterFirstEval()])
    one_epoch = runner.train(compose("trainer.epochs=1"), tmp_path / "one")
    assert stopped["steps"] == one_epoch["steps"] and stopped["weights_sha256"] == one_epoch["weights_sha256"]
    assert stopped["stopped_early"] == f"seen val_loss {one_epoch['val_loss']:.3f}"
    assert checkpoint.latest_checkpoint(tmp_path / "stopped").name == f"step_{one_epoch['steps']:07d}"


def test_a_checkpoint_from_before_named_state_resumes_the_same(compose, tmp_path):
    """Checkpoints written before the components kept their state by name (loop.ema.*, loop.monitor,
    loop.grad_scaler) still resume to the same weights, average and early-stopping state."""
    overrides = ("trainer.epochs=4", "trainer.ckpt_every=23", "trainer.keep_last=9", "trainer.ema_decay=0.9",
                 "+trainer.early_stopping.patience=2", "trainer.keep_best=true")
    runner.train(compose(*overrides), tmp_path / "full")
    for name in ("new", "old"):
        shutil.copytree(tmp_path / "full", tmp_path / name)
        _cut_to(tmp_path / name, 46)
    step = tmp_path / "old" / "checkpoints" / "step_0000046"
    stored = load_file(step / "optimizer.safetensors")
    earlier = {("loop." + key if key.startswith("ema.") else "loop.monitor" if key == "monitor.state" else key): tensor
               for key, tensor in stored.items()}
    assert any(key.startswith("loop.ema.") for key in earlier) and "loop.monitor" in earlier
    save_file(earlier, step / "optimizer.safetensors")
    manifest = json.loads((step / "manifest.json").read_text())
    manifest["optimizer.safetensors"] = checkpoint.file_sha256(step / "optimizer.safetensors")
    (step / "manifest.json").write_text(json.dumps(manifest))
    new, old = runner.resume(tmp_path / "new"), runner.resume(tmp_path / "old")
    for key in ("weights_sha256", "val_loss_ema", "best", "stopped_early", "steps"):
        assert old[key] == new[key], key


@pytest.mark.parametrize("plots", ["false", "true"])  # with plots, the run draws them on its way out of a failed set-up
def test_two_callbacks_cannot_keep_state_under_one_name(compose, tmp_path, plots):
    with pytest.raises(runner.RunError, match="callback names must be unique"):
        runner.train(compose("trainer.max_steps=2", f"trainer.plots={plots}"), tmp_path, callbacks=[Counter(), Counter()])
