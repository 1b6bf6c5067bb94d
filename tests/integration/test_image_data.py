"""data=mnist, cifar10, cifar100: files written here in each format's own layout (conftest's writers,
from the format's specification) are read back pixel for pixel and label for label; a bad directory,
file or shape is a ConfigError naming data.root or data.shape, and CIFAR's pickled version is refused
without being unpickled."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import runner
from conftest import Payload, write_cifar, write_idx, write_pngs
from runner.data.sources import load_data


def images_in(image_datasets, name: str, *overrides: str) -> list[str]:
    """The digits CNN on a dataset's images, as the config files' comments say to run it."""
    vars_ = ["model.vars.size=28"] if name == "mnist" else ["model.vars.channels=3", "model.vars.size=32"]
    classes = ["data.num_outputs=3"] if name == "image_folder" else []
    return [f"data={name}", f"data.root={image_datasets[name][0]}", "model=cnn", *vars_, *classes, *overrides]


def scaled(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images.astype(np.float32) / np.float32(255))


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100"])
def test_each_format_reads_back_pixel_for_pixel_and_label_for_label(compose, image_datasets, name):
    data = load_data(compose(*images_in(image_datasets, name)).data)
    written = image_datasets[name][1]
    assert torch.equal(data.train_x, scaled(written["train"][0])) and torch.equal(data.train_y, torch.from_numpy(written["train"][1]))
    # The source's own test split is the validation data.
    assert torch.equal(data.val_x, scaled(written["test"][0])) and torch.equal(data.val_y, torch.from_numpy(written["test"][1]))
    assert data.train_x.shape[1:] == ((3, 32, 32) if name.startswith("cifar") else (1, 28, 28))


def test_a_fraction_holds_out_from_the_training_files_and_a_flat_shape_gives_rows(compose, image_datasets):
    data = load_data(compose("data=mnist", f"data.root={image_datasets['mnist'][0]}", "data.val_fraction=0.25", "data.shape=[784]").data)
    images, labels = image_datasets["mnist"][1]["train"]
    assert (len(data.train_x), len(data.val_x)) == (30, 10)  # 40 training images; the 12 test images unused
    order = torch.randperm(40, generator=torch.Generator().manual_seed(0))  # data.split_seed
    rows = scaled(images).reshape(40, 784)
    assert torch.equal(data.val_x, rows[order[:10]]) and torch.equal(data.train_y, torch.from_numpy(labels)[order[10:]])


def test_a_cnn_trains_on_mnist_files_and_its_val_loss_is_plain_cross_entropy(compose, image_datasets, tmp_path):
    summary = runner.train(compose(*images_in(image_datasets, "mnist", "trainer.max_steps=3", "trainer.batch_size=16")), tmp_path)
    assert summary["steps"] == 3
    model = runner.load(tmp_path).eval()
    images, labels = image_datasets["mnist"][1]["test"]
    with torch.no_grad():
        expected = F.cross_entropy(model(scaled(images)), torch.from_numpy(labels)).item()
    assert summary["val_loss"] == pytest.approx(expected, rel=1e-5)


def _error(compose, *overrides: str) -> str:
    with pytest.raises(runner.ConfigError) as caught:
        load_data(compose(*overrides).data)
    return str(caught.value)


def test_a_missing_directory_or_file_names_data_root_and_what_to_put_there(compose, image_datasets, tmp_path):
    assert f"data.root: no such directory: {tmp_path / 'nowhere'}; put the four MNIST IDX files (train-images-idx3-ubyte[.gz]" in \
        _error(compose, "data=mnist", f"data.root={tmp_path / 'nowhere'}")
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte"):
        (tmp_path / name).write_bytes((image_datasets["mnist"][0] / name).read_bytes())
    assert f"data.root: {tmp_path} has no t10k-labels-idx1-ubyte[.gz]" in _error(compose, "data=mnist", f"data.root={tmp_path}")
    assert f"data.root: {tmp_path} has no data_batch_1.bin" in _error(compose, "data=cifar10", f"data.root={tmp_path}")


def test_malformed_files_are_named_with_what_is_wrong(compose, tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 28, 28), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3, np.uint8))  # one label short
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x0d\x01" + (2).to_bytes(4, "big") + b"\x00\x00")  # float type code
    message = _error(compose, "data=mnist", f"data.root={tmp_path}")
    assert f"{tmp_path / 't10k-labels-idx1-ubyte'}: not an IDX file of unsigned bytes (magic 00000d01" in message
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"\x00\x00")  # 2 of 5 bytes
    assert "its header says shape (5,) (5 bytes) but it holds 2 data bytes" in _error(compose, "data=mnist", f"data.root={tmp_path}")
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8))
    assert f"{tmp_path / 'train-labels-idx1-ubyte'}: 3 labels for 4 images" in _error(compose, "data=mnist", f"data.root={tmp_path}")
    cifar = tmp_path / "cifar"
    cifar.mkdir()
    for i in range(1, 6):
        write_cifar(cifar / f"data_batch_{i}.bin", np.zeros((1, 3, 32, 32), np.uint8), [0])
    (cifar / "test_batch.bin").write_bytes(bytes(3073 + 100))
    assert f"{cifar / 'test_batch.bin'}: 3173 bytes is not a whole number of 3073-byte records" in _error(compose, "data=cifar10", f"data.root={cifar}")


def test_cifar_s_pickled_version_is_refused_and_never_unpickled(compose, tmp_path):
    marker = tmp_path / "unpickled"
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        (tmp_path / name).write_bytes(pickle.dumps(Payload(str(marker))))
    message = _error(compose, "data=cifar10", f"data.root={tmp_path}")
    assert "holds CIFAR's python version (pickled batches), which runner never unpickles; download the binary version (cifar-10-binary.tar.gz)" in message
    assert not marker.exists()


def test_a_shape_the_source_cannot_give_is_a_config_error_before_any_work(compose, image_datasets):
    with pytest.raises(runner.ConfigError, match=r"data.shape: mnist's samples have shape \[1, 28, 28\]; \[3, 32, 32\] holds 3072 values, not 784"):
        runner.build(compose("data=mnist", f"data.root={image_datasets['mnist'][0]}", "data.shape=[3,32,32]", "data.num_features=3072"))
    with pytest.raises(runner.ConfigError, match=r"data.num_features: is 64 but data.shape \[1, 28, 28\] holds 784 values"):
        runner.build(compose("data=mnist", f"data.root={image_datasets['mnist'][0]}", "data.num_features=64"))
    with pytest.raises(runner.ConfigError, match="data.val_fraction: null means the source's own test split, and digits has none"):
        runner.build(compose("data.val_fraction=null"))


def test_the_cnn_s_reshape_takes_flat_rows_and_images_alike(compose, image_datasets):
    model = runner.build(compose(*images_in(image_datasets, "mnist"))).eval()
    images = scaled(image_datasets["mnist"][1]["test"][0])  # (12, 1, 28, 28)
    with torch.no_grad():
        from_images, from_rows = model(images), model(images.reshape(12, 784))
    assert model.image(images.reshape(12, 784)).shape == (12, 1, 28, 28)
    assert torch.equal(from_images, from_rows)


def test_an_image_folder_reads_back_pixel_for_pixel_with_classes_in_sorted_order(compose, image_datasets, tmp_path):
    root, written = image_datasets["image_folder"]
    data = load_data(compose(*images_in(image_datasets, "image_folder")).data)
    # Files are read class by class (cat, dog, emu), each class's in name order.
    for split, x, y in (("train", data.train_x, data.train_y), ("test", data.val_x, data.val_y)):
        images, labels = written[split]
        order = np.argsort(labels, kind="stable")
        assert torch.equal(x, scaled(images[order])) and torch.equal(y, torch.from_numpy(labels[order]))
    # A JPEG decodes as Pillow itself decodes it; a grayscale folder gives one channel.
    from PIL import Image

    gray = np.arange(64, dtype=np.uint8).reshape(1, 1, 8, 8)
    flat_root = tmp_path / "flat"
    (flat_root / "a").mkdir(parents=True)
    (flat_root / "b").mkdir()
    Image.fromarray(gray[0, 0]).save(flat_root / "a" / "0.png")
    Image.fromarray(255 - gray[0, 0]).save(flat_root / "b" / "0.jpg", quality=90)
    flat = load_data(compose("data=image_folder", f"data.root={flat_root}", "data.shape=[1,8,8]", "data.num_features=64",
                             "data.num_outputs=2", "data.val_fraction=0.5").data)
    both = torch.cat([flat.train_x, flat.val_x])[torch.cat([flat.train_y, flat.val_y]).argsort()]
    assert torch.equal(both[0, 0], scaled(gray[0, 0]))
    assert torch.equal(both[1, 0], scaled(np.asarray(Image.open(flat_root / "b" / "0.jpg"))))


def test_an_image_folder_refuses_what_does_not_fit_naming_the_key(compose, image_datasets, tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    write_pngs(root / "train", np.zeros((2, 3, 32, 32), np.uint8), [0, 1], ["a", "b"])
    args = ["data=image_folder", f"data.root={root}", "data.num_outputs=2"]
    assert f"data.val_fraction: is null (the source's own split) but {root} has no val/ folder" in _error(compose, *args)
    assert f"data.num_outputs: is 3 but {root} has 2 class folders (a, b)" in _error(compose, *args, "data.num_outputs=3", "data.val_fraction=0.5")
    Image.new("RGB", (16, 32)).save(root / "train" / "a" / "small.png")
    assert f"data.shape: is [3, 32, 32] (mode RGB, 32x32) but {root / 'train' / 'a' / 'small.png'} is mode RGB, 16x32" in \
        _error(compose, *args, "data.val_fraction=0.5")
    Image.new("RGBA", (32, 32)).save(root / "train" / "a" / "small.png")
    assert "is mode RGBA, 32x32; every image must have the declared shape" in _error(compose, *args, "data.val_fraction=0.5")
    (root / "train" / "a" / "small.png").write_bytes(b"not a png")
    assert f"data.root: {root / 'train' / 'a' / 'small.png'}: cannot be decoded as an image" in _error(compose, *args, "data.val_fraction=0.5")
    with pytest.raises(runner.ConfigError, match="data.shape: required for data.name=image_folder"):
        runner.build(compose(*args, "data.shape=null"))
