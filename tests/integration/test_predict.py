"""runner.predict, and the statistics a run normalizes with: fitted once on its training images, written
into its saved config, and used again by its evaluation on other data and its predictions, checked
against the statistics and the forward pass computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

import runner
from conftest import write_cifar

NORMALIZED = ["data.transforms.train=[horizontal_flip, normalize]", "data.transforms.eval=[normalize]"]


def cifar(root, *overrides: str) -> list[str]:
    return ["data=cifar10", f"data.root={root}", "model=cnn", "model.vars.channels=3", "model.vars.size=32", "trainer.max_steps=3",
            "trainer.batch_size=8", "trainer.progress=off", "trainer.tensorboard=false", "trainer.plots=false", *overrides]


@pytest.fixture(scope="module")
def normalized_run(tmp_path_factory, image_datasets):
    run_dir = tmp_path_factory.mktemp("normalized")
    runner.train(runner.compose(cifar(image_datasets["cifar10"][0], *NORMALIZED)), run_dir)
    train = image_datasets["cifar10"][1]["train"][0].astype(np.float64) / 255
    return run_dir, train.mean(axis=(0, 2, 3)), train.std(axis=(0, 2, 3))


def by_hand(run_dir, images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    x = (images.astype(np.float64) / 255 - mean[None, :, None, None]) / std[None, :, None, None]
    with torch.no_grad():
        return runner.load(run_dir)(torch.from_numpy(x).float())


def test_the_saved_config_holds_the_statistics_fitted_on_the_training_images(normalized_run):
    run_dir, mean, std = normalized_run
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["transforms"]
    assert saved["train"][0] == {"name": "horizontal_flip", "p": 0.5}
    for step in (saved["train"][1], saved["eval"][0]):
        assert step["name"] == "normalize"
        assert np.allclose(step["mean"], mean, rtol=0, atol=1e-7) and np.allclose(step["std"], std, rtol=0, atol=1e-7)  # of float32 pixels


def test_predict_normalizes_as_training_did_and_returns_the_model_s_outputs(normalized_run, image_datasets):
    run_dir, mean, std = normalized_run
    images = np.random.default_rng(5).integers(0, 256, (6, 3, 32, 32), dtype=np.uint8)
    expected = by_hand(run_dir, images, mean, std)
    got = runner.predict(run_dir, torch.from_numpy(images.astype(np.float32) / np.float32(255)))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    one = runner.predict(run_dir, images[0].astype(np.float32) / 255)  # one sample, as a NumPy array
    torch.testing.assert_close(one, expected[:1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"inputs: expected samples of shape \[3, 32, 32\] \(the run's data.shape\)"):
        runner.predict(run_dir, torch.zeros(2, 3, 28, 28))


def test_evaluate_on_other_images_normalizes_with_the_training_run_s_statistics(normalized_run, tmp_path):
    run_dir, mean, std = normalized_run
    rng = np.random.default_rng(11)
    other = tmp_path / "other"
    other.mkdir()
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:  # brighter images: other statistics
        write_cifar(other / name, rng.integers(128, 256, (4, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 4))
    images = np.fromfile(other / "test_batch.bin", dtype=np.uint8).reshape(4, 3073)
    labels, pixels = torch.from_numpy(images[:, 0].astype(np.int64)), images[:, 1:].reshape(4, 3, 32, 32)
    expected = torch.nn.functional.cross_entropy(by_hand(run_dir, pixels, mean, std).double(), labels).item()
    assert runner.evaluate(run_dir, [f"data.root={other}"])["val_loss"] == pytest.approx(expected, rel=1e-5)
