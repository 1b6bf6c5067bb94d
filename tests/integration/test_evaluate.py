"""runner.evaluate and `python -m runner.evaluate`: a trained run's model on other data, compared with
the loss and accuracy computed by hand in plain torch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import runner
from conftest import run_module, write_idx


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory, image_datasets):
    root = image_datasets["mnist"][0]
    run_dir = tmp_path_factory.mktemp("run")
    runner.train(runner.compose(["data=mnist", f"data.root={root}", "model=cnn", "model.vars.size=28", "trainer.max_steps=4",
                                 "trainer.batch_size=16", "trainer.progress=off", "trainer.tensorboard=false", "trainer.plots=false"]), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def other_mnist(tmp_path_factory):
    """Another MNIST directory: its 7 test images are what evaluate should score."""
    rng = np.random.default_rng(9)
    root = tmp_path_factory.mktemp("other")
    for prefix, n in (("train", 5), ("t10k", 7)):
        write_idx(root / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8))
    return root


def by_hand(run_dir, root) -> dict:
    from runner.data.images import read_idx

    images = torch.from_numpy(read_idx(root / "t10k-images-idx3-ubyte").astype(np.float32) / np.float32(255))[:, None]
    labels = torch.from_numpy(read_idx(root / "t10k-labels-idx1-ubyte").astype(np.int64))
    with torch.no_grad():
        out = runner.load(run_dir)(images)
    return {"val_loss": F.cross_entropy(out, labels).item(), "val_accuracy": (out.argmax(1) == labels).float().mean().item()}


def test_evaluate_scores_the_run_s_model_on_other_data(mnist_run, other_mnist):
    metrics = runner.evaluate(mnist_run, [f"data.root={other_mnist}"])
    expected = by_hand(mnist_run, other_mnist)
    assert metrics["samples"] == 7
    assert metrics["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-6)
    assert metrics["val_accuracy"] == pytest.approx(expected["val_accuracy"])


def test_evaluate_refuses_another_model_and_a_bad_key(mnist_run):
    with pytest.raises(runner.ConfigError, match="model.layers.head.out_features: the run was trained with model.layers.head.out_features=10; "
                                                 "evaluate uses the run's trained model"):
        runner.evaluate(mnist_run, ["model.layers.head.out_features=5"])
    with pytest.raises(runner.ConfigError, match="data.shape: mnist's samples have shape"):
        runner.evaluate(mnist_run, ["data.shape=[3,32,32]", "data.num_features=3072"])


def test_the_cli_prints_the_metrics_as_json_and_exits_2_on_a_config_error(mnist_run, other_mnist):
    result = run_module("runner.evaluate", str(mnist_run), f"data.root={other_mnist}")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["val_loss"] == pytest.approx(by_hand(mnist_run, other_mnist)["val_loss"], rel=1e-6)
    bad = run_module("runner.evaluate", str(mnist_run), "data.root=/nowhere")
    assert bad.returncode == 2 and "data.root: no such directory: /nowhere" in bad.stderr and "Traceback" not in bad.stderr
