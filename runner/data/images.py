"""The standard image datasets, read from a local directory in their own on-disk formats (nothing is
downloaded and nothing is unpickled):

- MNIST and Fashion-MNIST: IDX files (`train-images-idx3-ubyte`, ... plain or `.gz`), as LeCun's
  page and zalandoresearch/fashion-mnist ship them;
- CIFAR-10 and CIFAR-100: the binary version (`data_batch_1.bin` ... `test_batch.bin`; `train.bin`,
  `test.bin`), records of label byte(s) then 3072 pixel bytes, red plane, green plane, blue plane.

- an image folder: one subfolder per class of PNG or JPEG files (torchvision's ImageFolder layout),
  under `train/` and `val/`, or directly under the root; decoded with Pillow.

Each reader returns (train images, train labels, test images, test labels): images (N, C, H, W) as
uint8, labels int64 (the image folder: test arrays None without `val/`). The caller scales pixels
to [0, 1].
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from runner.errors import ConfigError, Problem

_IDX_UBYTE = 0x08  # the only IDX element type MNIST uses
MNIST_FILES = {
    "train images": "train-images-idx3-ubyte", "train labels": "train-labels-idx1-ubyte",
    "test images": "t10k-images-idx3-ubyte", "test labels": "t10k-labels-idx1-ubyte",
}
_CIFAR = {  # name -> (training files, test files, label bytes per record)
    "cifar10": ([f"data_batch_{i}.bin" for i in range(1, 6)], ["test_batch.bin"], 1),
    "cifar100": (["train.bin"], ["test.bin"], 2),  # coarse label, then fine label: the fine one is the class
}
_CIFAR_PICKLED = {"cifar10": "data_batch_1", "cifar100": "train"}  # the python version's files
_PIXELS = 3 * 32 * 32
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def read_mnist(root: Path) -> Arrays:
    """MNIST-layout IDX files under `root` (each plain or gzipped)."""
    _check_root(root, "the four MNIST IDX files (" + ", ".join(f"{n}[.gz]" for n in MNIST_FILES.values()) + ")")
    arrays = {}
    for role, name in MNIST_FILES.items():
        path = _find(root, name)
        array = read_idx(path)
        want = 3 if role.endswith("images") else 1
        if array.ndim != want:
            raise _bad(path, f"expected {want}-D {role}, got shape {array.shape}")
        arrays[role] = array
    for split in ("train", "test"):
        images, labels = arrays[f"{split} images"], arrays[f"{split} labels"]
        if len(images) != len(labels):
            raise _bad(_find(root, MNIST_FILES[f"{split} labels"]), f"{len(labels)} labels for {len(images)} images")
    return (arrays["train images"][:, None], arrays["train labels"].astype(np.int64),
            arrays["test images"][:, None], arrays["test labels"].astype(np.int64))


def read_idx(path: Path) -> np.ndarray:
    """Returns the array of an IDX file of unsigned bytes: magic 0x0000 08 <ndim>, ndim big-endian
    int32 sizes, then the data."""
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as handle:
        try:
            raw = handle.read()
        except (OSError, EOFError) as error:  # a truncated or corrupt .gz
            raise _bad(path, f"cannot be read: {error}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE:
        raise _bad(path, f"not an IDX file of unsigned bytes (magic {raw[:4].hex() or 'missing'}, expected 000008 then ndim)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(raw[4:header], dtype=">i4")) if len(raw) >= header else ()
    if len(shape) != ndim or len(raw) - header != int(np.prod(shape)):
        raise _bad(path, f"its header says shape {shape} ({int(np.prod(shape))} bytes) but it holds {len(raw) - header} data bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_cifar(root: Path, name: str) -> Arrays:
    """CIFAR-10 or CIFAR-100's binary version under `root`."""
    train_files, test_files, label_bytes = _CIFAR[name]
    _check_root(root, f"CIFAR's binary version ({', '.join(train_files + test_files)})")
    if not (root / train_files[0]).is_file() and (root / _CIFAR_PICKLED[name]).is_file():
        raise ConfigError([Problem("data.root", (
            f"{root} holds CIFAR's python version (pickled batches), which runner never unpickles; "
            f"download the binary version ({'cifar-10-binary.tar.gz' if name == 'cifar10' else 'cifar-100-binary.tar.gz'}) "
            f"and point data.root at the folder holding {train_files[0]}"))])
    train = [_cifar_records(_find(root, f, gz=False), label_bytes) for f in train_files]
    test = [_cifar_records(_find(root, f, gz=False), label_bytes) for f in test_files]
    return (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]),
            np.concatenate([x for x, _ in test]), np.concatenate([y for _, y in test]))


def _cifar_records(path: Path, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    record = label_bytes + _PIXELS
    if raw.size == 0 or raw.size % record:
        raise _bad(path, f"{raw.size} bytes is not a whole number of {record}-byte records ({label_bytes} label byte(s) + 3072 pixels)")
    records = raw.reshape(-1, record)
    return records[:, label_bytes:].reshape(-1, 3, 32, 32), records[:, label_bytes - 1].astype(np.int64)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_MODES = {1: "L", 3: "RGB"}  # channels -> the Pillow mode an image must have


def read_image_folder(root: Path, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, list[str]]:
    """`root/train/<class>/*` and `root/val/<class>/*` (or `root/<class>/*`), each image of `shape`
    (channels, height, width) in Pillow mode L (1 channel) or RGB (3); also returns the class names,
    sorted, whose index is the label."""
    _check_root(root, "one subfolder per class of PNG or JPEG images (or train/ and val/ holding such subfolders)")
    train_dir = root / "train" if (root / "train").is_dir() else root
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ConfigError([Problem("data.root", f"{train_dir} has no class subfolders (expected {train_dir}/<class>/<image>.png)")])
    train = _decode_classes(train_dir, classes, shape)
    if train_dir == root or not (root / "val").is_dir():
        return (*train, None, None, classes)
    extra = sorted(p.name for p in (root / "val").iterdir() if p.is_dir() and p.name not in classes)
    if extra:
        raise ConfigError([Problem("data.root", f"{root / 'val'} has classes that train/ lacks: {', '.join(extra)}")])
    return (*train, *_decode_classes(root / "val", classes, shape), classes)


def _decode_classes(folder: Path, classes: list[str], shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    if len(shape) != 3 or shape[0] not in _MODES:
        raise ConfigError([Problem("data.shape", f"expected [channels, height, width] with 1 or 3 channels, got {list(shape)}")])
    mode, size = _MODES[shape[0]], (shape[2], shape[1])  # Pillow sizes are (width, height)
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            try:
                with Image.open(path) as image:
                    if image.mode != mode or image.size != size:
                        raise ConfigError([Problem("data.shape", (
                            f"is {list(shape)} (mode {mode}, {size[0]}x{size[1]}) but {path} is mode {image.mode}, "
                            f"{image.size[0]}x{image.size[1]}; every image must have the declared shape"))])
                    pixels = np.asarray(image, dtype=np.uint8)
            except (UnidentifiedImageError, OSError) as error:
                raise _bad(path, f"cannot be decoded as an image: {error}") from None
            images.append(pixels.reshape(size[1], size[0], -1).transpose(2, 0, 1))
            labels.append(label)
    if not images:
        raise ConfigError([Problem("data.root", f"{folder} holds no {'/'.join(IMAGE_SUFFIXES)} files in its class subfolders")])
    return np.stack(images), np.array(labels, dtype=np.int64)


def _check_root(root: Path, what: str) -> None:
    if not root.is_dir():
        raise ConfigError([Problem("data.root", f"no such directory: {root}; put {what} there (runner downloads nothing)")])


def _find(root: Path, name: str, gz: bool = True) -> Path:
    for candidate in (root / name, root / f"{name}.gz") if gz else (root / name,):
        if candidate.is_file():
            return candidate
    raise ConfigError([Problem("data.root", f"{root} has no {name}{'[.gz]' if gz else ''}")])


def _bad(path: Path, why: str) -> ConfigError:
    return ConfigError([Problem("data.root", f"{path}: {why}")])
