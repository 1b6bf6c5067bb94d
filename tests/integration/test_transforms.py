"""data.transforms: each transform checked against the same operation written in plain torch/numpy
on the images the test wrote; random ones are reproducible from (seed, epoch, batch), and a run with
them resumed mid-epoch is bit-identical; bad lists name the item's key."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import runner
from conftest import resumes_bit_identically
from runner.data.sources import load_data


def cifar(image_datasets, *overrides: str) -> list[str]:
    return ["data=cifar10", f"data.root={image_datasets['cifar10'][0]}", "model=cnn", "model.vars.channels=3", "model.vars.size=32", *overrides]


def raw(image_datasets, split: str) -> torch.Tensor:
    return torch.from_numpy(image_datasets["cifar10"][1][split][0].astype(np.float32) / np.float32(255))


def test_normalize_uses_the_given_or_the_training_split_s_per_channel_statistics(compose, image_datasets):
    data = load_data(compose(*cifar(image_datasets, "data.transforms.eval=[{name: normalize, mean: [0.5, 0.4, 0.3], std: [0.2, 0.25, 0.5]}]")).data)
    val = raw(image_datasets, "test").double().numpy()
    expected = (val - np.array([0.5, 0.4, 0.3])[None, :, None, None]) / np.array([0.2, 0.25, 0.5])[None, :, None, None]
    assert np.allclose(data.val_x.numpy(), expected, rtol=0, atol=1e-6)
    computed = load_data(compose(*cifar(image_datasets, "data.transforms.eval=[normalize]")).data)
    train = raw(image_datasets, "train").double().numpy()
    mean, std = train.mean(axis=(0, 2, 3)), train.std(axis=(0, 2, 3))
    assert np.allclose(computed.val_x.numpy(), (val - mean[None, :, None, None]) / std[None, :, None, None], rtol=0, atol=1e-6)
    assert torch.equal(computed.train_x, raw(image_datasets, "train"))  # the training images stay as read: transformed per batch


def test_random_crop_and_flip_give_crops_of_the_padded_image_and_mirrors(compose, image_datasets):
    data = load_data(compose(*cifar(image_datasets, "data.transforms.train=[{name: random_crop, padding: 2}, {name: horizontal_flip, p: 0.5}]")).data)
    batches = data.batches(10, seed=3)
    served = torch.cat([x for x, _ in batches.epoch(0)])
    order = batches.order(0)
    padded = torch.nn.functional.pad(raw(image_datasets, "train")[order], (2, 2, 2, 2))
    offsets, flips = set(), 0
    for image, source in zip(served, padded):
        found = [(i, j, f) for i in range(5) for j in range(5) for f in (False, True)
                 if torch.equal(image, source[:, i:i + 32, j:j + 32].flip(-1) if f else source[:, i:i + 32, j:j + 32])]
        assert found, "a served image is no flip of a crop of its padded source"
        offsets.add(found[0][:2])
        flips += found[0][2]
    assert len(offsets) > 5 and 0 < flips < len(served)  # offsets and flips vary over the 30 images
    # From (seed, epoch, batch) alone: the same epoch again is the same; the next one differs.
    assert torch.equal(served, torch.cat([x for x, _ in data.batches(10, seed=3).epoch(0)]))
    assert not torch.equal(served, torch.cat([x for x, _ in batches.epoch(1)])[batches.order(1).argsort()][order])
    assert torch.equal(torch.cat([x for x, _ in batches.epoch(0, start=1)]), served[10:])


def test_a_run_with_random_transforms_resumed_mid_epoch_is_bit_identical(compose, image_datasets, tmp_path):
    overrides = cifar(image_datasets, "data.transforms.train=[{name: random_crop, padding: 4}, horizontal_flip, normalize]",
                      "data.transforms.eval=[normalize]", "trainer.batch_size=8", "trainer.epochs=2", "trainer.ckpt_every=2", "trainer.keep_last=20")
    resumes_bit_identically(compose(*overrides), tmp_path, kept=3)  # 30 images: 4 steps an epoch; steps 2, 4, 6 kept: 6 is mid-epoch


BAD_LISTS = [  # (train, eval, what the one ConfigError says of each bad item)
    ("[{name: random_crp}, {name: horizontal_flip, p: 2}, {name: normalize, mean: [0.5]}]", "[horizontal_flip, {name: normalize, scale: 2}]", [
        "data.transforms.train[0].name: unknown transform 'random_crp'; expected one of random_crop, horizontal_flip, resize, center_crop, normalize; "
        "did you mean 'random_crop'?",
        "data.transforms.train[1].p: expected a probability in [0, 1], got 2",
        "data.transforms.train[2].mean: gives 1 value(s) for 3 channel(s) (data.shape [3, 32, 32])",
        "data.transforms.eval[0]: horizontal_flip is random: evaluation takes deterministic transforms only",
        "data.transforms.eval[1]: normalize: got an unexpected keyword argument 'scale'"]),
    ("[{name: center_crop, size: 40}, {name: resize, size: [0, 3]}]", "[{name: resize, size: 36}]", [
        "data.transforms.train[0].size: [40, 40] is larger than the 32x32 images it gets",
        "data.transforms.train[1].size: expected a size > 0 or [height, width], got [0, 3]"]),
    ("[]", "[{name: resize, size: 36}]", ["data.transforms: train ends with images of shape [3, 32, 32] and eval with [3, 36, 36]"]),
]


@pytest.mark.parametrize(("train", "evaluation", "lines"), BAD_LISTS)
def test_bad_transform_lists_name_the_item(compose, image_datasets, train, evaluation, lines):
    with pytest.raises(runner.ConfigError) as caught:
        runner.build(compose(*cifar(image_datasets, f"data.transforms.train={train}", f"data.transforms.eval={evaluation}")))
    for line in lines:
        assert line in str(caught.value)


def test_image_transforms_need_an_image_shape(compose):
    with pytest.raises(runner.ConfigError, match=r"data.transforms: image transforms need data.shape \[channels, height, width\], got None"):
        runner.build(compose("data.transforms.train=[horizontal_flip]"))


def test_resize_is_pillows_bilinear_and_center_crop_takes_the_middle(compose, image_datasets, tmp_path):
    # The validation images went through eval's list once: compared with Pillow's own resize and numpy slicing.
    from PIL import Image

    data = load_data(compose(*cifar(image_datasets, "data.transforms.eval=[{name: resize, size: [45, 41]}, {name: center_crop, size: [40, 37]}]",
                                    "data.transforms.train=[{name: resize, size: [45, 41]}, {name: center_crop, size: [40, 37]}]")).data)
    pixels = image_datasets["cifar10"][1]["test"][0]  # (N, 3, 32, 32) uint8
    resized = np.stack([np.asarray(Image.fromarray(image.transpose(1, 2, 0)).resize((41, 45), Image.BILINEAR)).transpose(2, 0, 1)
                        for image in pixels]).astype(np.float64) / 255
    top, left = round((45 - 40) / 2), round((41 - 37) / 2)  # torchvision's corner: round((H - h) / 2)
    expected = resized[:, :, top : top + 40, left : left + 37]
    assert data.val_x.shape == (len(pixels), 3, 40, 37)
    assert np.abs(data.val_x.numpy() - expected).max() <= 2.5 / 255  # Pillow rounds to bytes; torch keeps floats
    by_short_side = load_data(compose(*cifar(image_datasets, "data.transforms.eval=[{name: resize, size: 16}]",
                                             "data.transforms.train=[{name: resize, size: 16}]")).data)
    assert by_short_side.val_x.shape[1:] == (3, 16, 16)


def test_a_model_sees_the_resized_and_cropped_images_in_training_and_evaluation(compose, image_datasets, tmp_path):
    sized = ["data.transforms.train=[{name: resize, size: 36}, {name: center_crop, size: 28}, horizontal_flip, normalize]",
             "data.transforms.eval=[{name: resize, size: 36}, {name: center_crop, size: 28}, normalize]"]
    cfg = compose(*cifar(image_datasets, *sized, "model.vars.size=28", "trainer.max_steps=2", "init=lsuv"))  # LSUV's batch too
    summary = runner.train(cfg, tmp_path)
    x = torch.from_numpy(image_datasets["cifar10"][1]["test"][0][:2].astype(np.float32) / np.float32(255))
    assert runner.predict(tmp_path, x).shape == (2, 10)
    assert np.isfinite(summary["val_loss"])
