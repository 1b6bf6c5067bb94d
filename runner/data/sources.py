"""Datasets (digits, synthetic, text, the user's own file, MNIST and CIFAR from a local directory) and
the in-memory batch server."""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from runner.config.schema import DataConfig
from runner.data.loader import Batches, LoaderBatches, Serving
from runner.data.tokens import TokenStream, read_ids, windows
from runner.data.transforms import Pipeline, make_pipeline
from runner.errors import ConfigError, Problem


@dataclass(frozen=True)
class Dataset:
    """Train and validation tensors, on the CPU until the trainer moves them. `transform` is applied to
    each training batch as it is served (the validation data was transformed once, when loaded)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    transform: Pipeline | None = None
    eval_transform: Pipeline | None = None  # already applied to val_x; kept for what it was (resolved_transforms)

    def to(self, device: torch.device, dtype: torch.dtype) -> "Dataset":
        """Returns the dataset on `device`, float features cast to `dtype` (token ids stay integers)."""

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)

        return Dataset(move(self.train_x), move(self.train_y), move(self.val_x), move(self.val_y), self.transform, self.eval_transform)

    def nbytes(self, dtype: torch.dtype) -> int:
        """The bytes the four tensors take once float features are cast to `dtype`."""
        size = dtype.itemsize
        return sum(t.numel() * (size if t.is_floating_point() else t.element_size()) for t in (self.train_x, self.train_y, self.val_x, self.val_y))

    def resolved_transforms(self) -> dict[str, list[dict]] | None:
        """`data.transforms` as this data applies them, fitted statistics written out; None without transforms."""
        if self.transform is None and self.eval_transform is None:
            return None
        return {"train": self.transform.settings() if self.transform else [], "eval": self.eval_transform.settings() if self.eval_transform else []}

    def batches(self, batch_size: int, seed: int, serve: Serving | None = None, device: torch.device | None = None,
                rank: int = 0, world: int = 1) -> "Batches | LoaderBatches":
        """The training batches' server: slices of these tensors, or with `serve` (data.loader as the run serves it,
        runner.data.loader.serving) workers a DataLoader's workers serving the same batches, moved to `device`.
        Under DDP each rank reads only its part of each batch."""
        if serve is None or serve.num_workers == 0:
            return Batches(self.train_x, self.train_y, batch_size, seed, self.transform, rank, world)
        return LoaderBatches(self.train_x, self.train_y, batch_size, seed, self.transform, device or self.train_x.device,
                             serve.num_workers, serve.pin_memory, serve.persistent_workers, serve.prefetch_factor, rank, world)


def load_data(cfg: DataConfig) -> Dataset | TokenStream:
    """Returns the train/val data of the configured source, checked against its declared shape: the
    source's own test split as val where it has one and `data.val_fraction` is null, else a seeded split."""
    try:
        made = DATASETS[cfg.name].make(cfg)
    except ValueError as error:  # e.g. scikit-learn refusing a sample count or class count
        raise ConfigError([Problem("data", f"could not make the {cfg.name} data: {str(error).splitlines()[0]}")]) from None
    if isinstance(made, TokenStream):
        return made  # read per batch, from its files
    features, targets, held_out = made if len(made) == 3 else (*made, None)
    pairs = [(features, targets)] if held_out is None or cfg.val_fraction is not None else [(features, targets), held_out]
    checked = []
    for x, y in pairs:
        x = _as_declared_shape(x, cfg)
        y = x if cfg.task == "reconstruction" else y  # an autoencoder's target is its input
        _check_shapes(x, y, cfg)
        checked.append((x, y))
    if len(checked) == 2:
        (train_x, train_y), (val_x, val_y) = checked
        data = Dataset(train_x, train_y, val_x, val_y)
    else:
        data = split(*checked[0], cfg.val_fraction, cfg.split_seed)
    return _transformed(data, cfg)


def _transformed(data: Dataset, cfg: DataConfig) -> Dataset:
    """The data with `data.transforms`: eval's applied to the validation images now, train's fitted
    (normalize's statistics, on the training images) and kept for each batch."""
    from omegaconf import OmegaConf

    train, evaluation = (getattr(cfg.transforms, split) for split in ("train", "eval"))  # a spec's tuples or a composed config's lists
    if not train and not evaluation:
        return data
    train, evaluation = (make_pipeline(OmegaConf.to_container(items) if OmegaConf.is_config(items) else items) for items in (train, evaluation))
    fitted: dict = {}  # statistics both pipelines share, computed once
    train.fit(data.train_x, fitted)
    evaluation.fit(data.train_x, fitted)
    return Dataset(data.train_x, data.train_y, evaluation(data.val_x), data.val_y, train if train.steps else None,
                   evaluation if evaluation.steps else None)


def sample_shape(cfg: DataConfig) -> tuple[int, ...]:
    """One stored sample's feature shape: `data.shape`, or a vector of `data.num_features`."""
    return tuple(cfg.shape) if cfg.shape is not None else (cfg.num_features,)


def input_shape(cfg: DataConfig) -> tuple[int, ...]:
    """One sample's shape as the model sees it: after `data.transforms` (resize and center_crop change it;
    the spec makes both lists end alike)."""
    from omegaconf import OmegaConf

    items = cfg.transforms.eval or cfg.transforms.train
    if not items or cfg.shape is None:
        return sample_shape(cfg)
    return make_pipeline(OmegaConf.to_container(items) if OmegaConf.is_config(items) else items).shape(sample_shape(cfg))


def _as_declared_shape(x: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """The features reshaped to `data.shape` where only the layout differs (images as flat rows, say)."""
    shape = sample_shape(cfg)
    if x.dim() >= 2 and tuple(x.shape[1:]) != shape and math.prod(x.shape[1:]) == math.prod(shape) and cfg.shape is not None:
        return x.reshape(len(x), *shape)
    return x


def split(features: torch.Tensor, targets: torch.Tensor, val_fraction: float | None, seed: int) -> Dataset:
    """Returns a seeded random split; the same seed gives every job of a sweep the same split."""
    n = features.shape[0]
    val_fraction = 0.2 if val_fraction is None else val_fraction  # a source without a test split of its own
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(n * val_fraction))
    val, train = order[:n_val], order[n_val:]
    return Dataset(features[train], targets[train], features[val], targets[val])


def _digits(cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    table = np.loadtxt(digits_file(), delimiter=",")  # what sklearn's load_digits reads, without its 1.6 s import
    x, y = table[:, :-1], table[:, -1].astype(np.int64)
    return torch.from_numpy(x / 16.0).float(), torch.from_numpy(y).long()


def digits_file() -> Path:
    """Returns scikit-learn's bundled digits.csv.gz, found without importing scikit-learn."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise ConfigError([Problem("data.name", "digits needs scikit-learn installed (it ships the data)")])
    return Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"


def _synthetic(cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import make_classification, make_regression

    if cfg.task == "regression":
        x, y = make_regression(
            n_samples=cfg.num_samples, n_features=cfg.num_features, n_targets=cfg.num_outputs,
            noise=cfg.noise, random_state=cfg.split_seed,
        )
        y = y.reshape(len(y), -1)
        y = (y - y.mean(0)) / y.std(0)  # unit-scale targets keep the default lr sensible
        return torch.from_numpy(x).float(), torch.from_numpy(y).float()
    informative = max(2, min(cfg.num_features, math.ceil(math.log2(cfg.num_outputs)) + 2))
    x, y = make_classification(
        n_samples=cfg.num_samples, n_features=cfg.num_features, n_informative=informative,
        n_redundant=0, n_classes=cfg.num_outputs, n_clusters_per_class=1,
        flip_y=cfg.noise, random_state=cfg.split_seed,
    )
    return torch.from_numpy(x).float(), torch.from_numpy(y).long()


def _text(cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    from runner.data.text import grammar_windows

    return grammar_windows(cfg.num_samples, cfg.num_features, cfg.num_outputs, cfg.split_seed)


def _mnist(cfg: DataConfig) -> tuple:
    from runner.data.images import read_mnist

    return _pixels(read_mnist(Path(str(cfg.root))))


def _cifar10(cfg: DataConfig) -> tuple:
    from runner.data.images import read_cifar

    return _pixels(read_cifar(Path(str(cfg.root)), "cifar10"))


def _cifar100(cfg: DataConfig) -> tuple:
    from runner.data.images import read_cifar

    return _pixels(read_cifar(Path(str(cfg.root)), "cifar100"))


def _image_folder(cfg: DataConfig) -> tuple:
    from runner.data.images import read_image_folder

    root = Path(str(cfg.root))
    train_x, train_y, val_x, val_y, classes = read_image_folder(root, sample_shape(cfg))
    if len(classes) != cfg.num_outputs:
        shown = ", ".join(classes[:8]) + (", ..." if len(classes) > 8 else "")
        raise ConfigError([Problem("data.num_outputs", f"is {cfg.num_outputs} but {root} has {len(classes)} class folders ({shown})")])
    if val_x is None:
        if cfg.val_fraction is None:
            raise ConfigError([Problem("data.val_fraction", f"is null (the source's own split) but {root} has no val/ folder: give a fraction to hold out")])
        return _scaled(train_x), torch.from_numpy(train_y)
    return _pixels((train_x, train_y, val_x, val_y))


def _pixels(arrays: tuple[np.ndarray, ...]) -> tuple:
    """(train images, labels, (test images, labels)) as tensors, pixels scaled from bytes to [0, 1]."""
    train_x, train_y, test_x, test_y = arrays
    return _scaled(train_x), torch.from_numpy(train_y), (_scaled(test_x), torch.from_numpy(test_y))


def _scaled(images: np.ndarray) -> torch.Tensor:
    return torch.tensor(images, dtype=torch.float32).div_(255.0)  # a copy: the file's buffer is read-only


def _tokens(cfg: DataConfig) -> TokenStream:
    root = Path(str(cfg.root))
    if not root.is_dir():
        raise ConfigError([Problem("data.root", f"no such directory: {root}; put train.bin and val.bin there (flat {cfg.dtype} token ids; runner downloads nothing)")])
    train = read_ids(root / "train.bin", cfg.dtype, cfg.vocab_size)
    val_x, val_y = windows(read_ids(root / "val.bin", cfg.dtype, cfg.vocab_size), cfg.block_size)
    windows(train, cfg.block_size, limit=1)  # at least one training window
    return TokenStream(train, cfg.block_size, val_x, val_y)


def _parquet(cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """A Parquet table (what Hugging Face `datasets` exports): the feature columns side by side, or one
    column of equal-length lists, and the target column; read with pyarrow."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(str(cfg.path))
    if not path.is_file():
        raise ConfigError([Problem("data.path", f"no such file: {path}")])
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as error:
        raise ConfigError([Problem("data.path", f"{path} is not a Parquet file: {str(error).splitlines()[0]}")]) from None
    features, target = list(cfg.features), str(cfg.target)
    problems = [Problem(key, f"{path} has no column {name!r}; it has: {', '.join(schema.names)}")
                for key, name in [*(("data.features", f) for f in features), ("data.target", target)] if name not in schema.names]
    if problems:
        raise ConfigError(problems)
    table = pq.read_table(path, columns=[*features, target])
    columns = []
    for name in features:
        column = table.column(name)
        try:
            if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type):
                columns.append(np.stack([np.asarray(row, dtype=np.float64) for row in column.to_pylist()]))
            else:
                columns.append(column.to_numpy().astype(np.float64)[:, None])
        except (ValueError, TypeError, pa.ArrowException) as error:
            raise ConfigError([Problem("data.features", f"{path}: column {name!r} ({column.type}) is not numbers or equal-length lists of numbers: {error}")]) from None
    y = table.column(target).to_numpy()
    if not np.issubdtype(y.dtype, np.number):
        raise ConfigError([Problem("data.target", f"{path}: column {target!r} holds {table.column(target).type}, not numbers")])
    x = torch.from_numpy(np.concatenate(columns, axis=1)).float()
    if cfg.task == "classification":
        if not np.array_equal(y, np.round(y)):
            raise ConfigError([Problem("data.target", f"{path}: classification targets must be integer class ids")])
        return x, torch.from_numpy(y.astype(np.int64))
    return x, torch.from_numpy(y.astype(np.float32)).reshape(len(y), -1)


def _file(cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    path = Path(str(cfg.path))
    if not path.is_file():
        raise ConfigError([Problem("data.path", f"no such file: {path}")])
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                x, y = _pick(dict(archive), cfg, path)
        elif path.suffix == ".pt":
            x, y = _pick(torch.load(path, map_location="cpu", weights_only=True), cfg, path)
        else:
            table = _read_csv(path)
            x, y = table[:, :-1], table[:, -1]
        x = torch.as_tensor(np.asarray(x, dtype=np.float64) if not torch.is_tensor(x) else x).float()
        y = torch.as_tensor(np.asarray(y) if not torch.is_tensor(y) else y)
    except ConfigError:
        raise
    except (OSError, ValueError, TypeError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        # weights_only=True refuses any pickled object that is not a tensor or container: nothing runs.
        raise ConfigError([Problem("data.path", f"could not read {path}: {str(error).splitlines()[0]}")]) from None
    if cfg.task == "classification":
        if y.is_floating_point() and not torch.equal(y, y.round()):
            raise ConfigError([Problem("data.path", f"{path}: classification targets must be integer class ids")])
        y = y.long()
    else:
        y = y.float().reshape(len(y), -1)
    return x, y



@dataclass(frozen=True)
class Source:
    """One `data.name`: the function that makes its (features, targets[, (test features, test targets)]),
    whether it reads a directory (`data.root`), and whether it has a test split of its own (used as the
    validation data when `data.val_fraction` is null)."""

    make: Callable[[DataConfig], tuple]
    reads: tuple[str, ...] = ()  # the keys of SOURCE_KEYS it reads (data.root, when read, is required)
    own_split: bool = False
    shape: tuple[int, ...] | None = None  # its samples' shape, where fixed
    needs_shape: bool = False  # data.shape must be given (images of any size)


# `data.name` -> its Source: the one list of datasets, which the spec checks names against.
DATASETS: dict[str, Source] = {
    "digits": Source(_digits), "synthetic": Source(_synthetic), "file": Source(_file, reads=("path",)),
    "parquet": Source(_parquet, reads=("path", "features", "target")), "text": Source(_text),
    "mnist": Source(_mnist, reads=("root",), own_split=True, shape=(1, 28, 28)),
    "cifar10": Source(_cifar10, reads=("root",), own_split=True, shape=(3, 32, 32)),
    "cifar100": Source(_cifar100, reads=("root",), own_split=True, shape=(3, 32, 32)),
    "image_folder": Source(_image_folder, reads=("root",), own_split=True, needs_shape=True),
    "tokens": Source(_tokens, reads=("root", "block_size", "vocab_size", "dtype"), own_split=True),
}
# Keys that only some sources read: set for another source, each is a config error rather than ignored.
SOURCE_KEYS = ("path", "root", "features", "target", "block_size", "vocab_size", "dtype")


def _pick(arrays: object, cfg: DataConfig, path: Path) -> tuple[object, object]:
    if not isinstance(arrays, dict):
        raise ConfigError([Problem("data.path", f"{path}: expected a dict of arrays, got {type(arrays).__name__}")])
    missing = [k for k in (cfg.features_key, cfg.targets_key) if k not in arrays]
    if missing:
        key = "data.features_key" if cfg.features_key in missing else "data.targets_key"
        raise ConfigError([Problem(key, f"{path} has no array {missing[0]!r}; it has: {', '.join(map(str, arrays)) or 'none'}")])
    return arrays[cfg.features_key], arrays[cfg.targets_key]


def _read_csv(path: Path) -> np.ndarray:
    with open(path, encoding="utf-8") as handle:
        first = handle.readline()
    try:
        [float(cell) for cell in first.strip().split(",")]
        skip = 0
    except ValueError:
        skip = 1  # a header row
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2, dtype=np.float64)
    except ValueError as error:
        raise ConfigError([Problem("data.path", f"{path}: non-numeric value ({str(error).splitlines()[0]})")]) from None
    if table.shape[1] < 2:
        raise ConfigError([Problem("data.path", f"{path}: expected feature columns then a target column, got {table.shape[1]} column(s)")])
    return table


def _check_shapes(x: torch.Tensor, y: torch.Tensor, cfg: DataConfig) -> None:
    problems = []
    if cfg.task == "language_model" and x.is_floating_point():
        problems.append(Problem("data.task", "language_model needs integer token ids as features"))
    shape = sample_shape(cfg)
    if cfg.shape is not None and tuple(x.shape[1:]) != shape:
        problems.append(Problem("data.shape", f"is {list(shape)} but the data's samples have shape {list(x.shape[1:])}"))
    elif cfg.shape is None and x.dim() != 2:
        problems.append(Problem("data.path" if cfg.name == "file" else "data.shape", f"features of shape {tuple(x.shape)} are not rows (samples, features): set data.shape to one sample's shape, {list(x.shape[1:])}"))
    elif cfg.shape is None and x.shape[1] != cfg.num_features:
        problems.append(Problem("data.num_features", f"is {cfg.num_features} but the data has {x.shape[1]} features per sample"))
    if len(x) != len(y):
        problems.append(Problem("data.path", f"{len(x)} feature rows but {len(y)} targets"))
    if len(x) < 2:
        problems.append(Problem("data", f"need at least 2 samples to split into train and val, got {len(x)}"))
    if cfg.task in ("classification", "language_model") and len(y) and (int(y.min()) < 0 or int(y.max()) >= cfg.num_outputs):
        problems.append(Problem("data.num_outputs", f"is {cfg.num_outputs} but class ids run from {int(y.min())} to {int(y.max())}"))
    if cfg.task == "reconstruction" and cfg.num_outputs != cfg.num_features:
        problems.append(Problem("data.num_outputs", f"a reconstruction task outputs its input: set it to data.num_features ({cfg.num_features})"))
    if cfg.task == "regression" and y.dim() == 2 and y.shape[1] != cfg.num_outputs:
        problems.append(Problem("data.num_outputs", f"is {cfg.num_outputs} but the data has {y.shape[1]} target column(s)"))
    if x.is_floating_point() and not torch.isfinite(x).all():
        problems.append(Problem("data.path" if cfg.name == "file" else "data", "features contain NaN or Inf"))
    if problems:
        raise ConfigError(problems)
