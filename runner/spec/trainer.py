"""data, trainer (early stopping and the device name included) and tracker: each key checked on its own terms."""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from typing import Any

from runner.config.schema import LossConfig, TrackerConfig
from runner.data.sources import DATASETS, SOURCE_KEYS
from runner.data.tokens import DTYPES as TOKEN_DTYPES
from runner.data.transforms import TRANSFORMS
from runner.errors import Problems, suggest
from runner.registry.tables import DTYPES, LOSSES, METRICS, TASKS, TRACKERS, callback_types, metric_names
from runner.spec.common import check_choice
from runner.spec.types import CallbackSpec, DataSpec, LossSpec, MonitorSpec, TrackerSpec, TrainerSpec, freeze

AUTOCAST = ("bfloat16", "float16")  # trainer.autocast
PROGRESS = ("auto", "bar", "log", "off")
DEVICE_FORM = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _check_positive(value: Any, key: str, problems: Problems, allow_zero: bool = False) -> None:
    if value is None:
        return
    if (value < 0) if allow_zero else (value <= 0):
        problems.add(key, f"expected a number {'>= 0' if allow_zero else '> 0'}, got {value}")


def check_data(data: DataSpec, problems: Problems) -> None:
    check_choice(data.name, DATASETS, "data.name", problems)
    check_choice(data.task, TASKS, "data.task", problems)
    _check_positive(data.num_features, "data.num_features", problems)
    _check_positive(data.num_outputs, "data.num_outputs", problems)
    _check_positive(data.num_samples, "data.num_samples", problems)
    source = DATASETS.get(data.name)
    if data.val_fraction is None:
        if source is not None and not source.own_split:
            problems.add("data.val_fraction", f"null means the source's own test split, and {data.name} has none: give a fraction")
    elif not 0.0 < data.val_fraction < 1.0:
        problems.add("data.val_fraction", f"expected a fraction strictly between 0 and 1, got {data.val_fraction}")
    if data.shape is not None:
        if not data.shape or not all(isinstance(n, int) and n > 0 for n in data.shape):
            problems.add("data.shape", f"expected a list of sizes > 0 (one sample's shape), got {list(data.shape)}")
        elif math.prod(data.shape) != data.num_features:
            problems.add("data.num_features", f"is {data.num_features} but data.shape {list(data.shape)} holds {math.prod(data.shape)} values: set it to that")
        elif source is not None and source.shape is not None and math.prod(data.shape) != math.prod(source.shape):
            problems.add("data.shape", f"{data.name}'s samples have shape {list(source.shape)}; {list(data.shape)} holds {math.prod(data.shape)} values, not {math.prod(source.shape)}")
    if source is not None and source.needs_shape and data.shape is None:
        problems.add("data.shape", f"required for data.name={data.name}: [channels, height, width] of every image")
    for key in SOURCE_KEYS:
        if source is not None and getattr(data, key) is not None and key not in source.reads:
            readers = [name for name, other in DATASETS.items() if key in other.reads]
            problems.add(f"data.{key}", f"data.name={data.name} does not read it (it is for data.name={' or '.join(readers)}); remove it")
    if source is not None and "root" in source.reads and not data.root:
        problems.add("data.root", f"required for data.name={data.name}: the directory holding its files (see docs/config.md#data)")
    if data.name == "file":
        if not data.path:
            problems.add("data.path", "required when data.name=file: the path of a .npz, .csv or .pt file")
        elif not data.path.endswith((".npz", ".csv", ".pt")):
            problems.add("data.path", f"expected a .npz, .csv or .pt file, got {data.path!r}")
    if data.name == "tokens":
        _check_tokens(data, problems)
    if data.name == "parquet":
        if not data.path or not str(data.path).endswith(".parquet"):
            problems.add("data.path", f"required for data.name=parquet: a .parquet file, got {data.path!r}")
        if not data.features:
            problems.add("data.features", "required for data.name=parquet: the feature column names (or one column of lists)")
        if not data.target:
            problems.add("data.target", "required for data.name=parquet: the target column's name")
    _check_transforms(data, problems)
    _check_loader(data, problems)


def _check_loader(data: DataSpec, problems: Problems) -> None:
    """data.loader: worker settings only with workers; the token stream reads its windows in the training process."""
    loader = data.loader
    workers = loader.num_workers
    if workers != "auto" and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 0):
        problems.add("data.loader.num_workers", f"expected auto or a number >= 0, got {workers!r}")
        return
    if loader.prefetch_factor is not None:
        _check_positive(loader.prefetch_factor, "data.loader.prefetch_factor", problems)
    if workers in (0, "auto"):
        for key in ("pin_memory", "persistent_workers", "prefetch_factor"):
            if getattr(loader, key) not in (None, False):
                problems.add(f"data.loader.{key}", "takes effect only with a given number of worker processes: set data.loader.num_workers > 0"
                                                   + (" (auto chooses these itself)" if workers == "auto" else "") + ", or remove it")
    elif data.name == "tokens":
        problems.add("data.loader.num_workers", "data=tokens slices its windows from the memory-mapped files in the training process "
                                                "(nothing to decode, bench figure 15): set 0")


def _check_transforms(data: DataSpec, problems: Problems) -> None:
    """data.transforms: known names, constructor arguments that construct, deterministic ones for eval."""
    lists = {"train": data.transforms.train, "eval": data.transforms.eval}
    if any(lists.values()) and (data.shape is None or len(data.shape) != 3):
        problems.add("data.transforms", f"image transforms need data.shape [channels, height, width], got {None if data.shape is None else list(data.shape)}")
    image = tuple(data.shape) if data.shape is not None and len(data.shape) == 3 else None
    ends: dict[str, tuple[int, ...] | None] = {}  # each list's output shape, where every step could take its input
    for split, items in lists.items():
        shape = image
        for index, item in enumerate(items):
            key = f"data.transforms.{split}[{index}]"
            item = {"name": item} if isinstance(item, str) else dict(item) if isinstance(item, dict) else None
            if item is None or not isinstance(item.get("name"), str):
                problems.add(key, "expected {name: <transform>, <argument>: value} or a transform's name")
                continue
            name = item.pop("name")
            if name not in TRANSFORMS:
                hint = suggest(name, TRANSFORMS)
                problems.add(f"{key}.name", f"unknown transform {name!r}; expected one of {', '.join(TRANSFORMS)}" + (f";{hint}" if hint else ""))
                continue
            try:
                transform = TRANSFORMS[name](**item)
            except TypeError as error:
                problems.add(key, f"{name}: {str(error).split('() ', 1)[-1]}")
                continue
            except ValueError as error:
                problems.add(f"{key}.{str(error).split(':')[0]}", str(error).split(": ", 1)[1])
                continue
            channels = data.shape[0] if data.shape is not None and len(data.shape) == 3 else None
            for stat in ("mean", "std"):
                given = getattr(transform, stat, None)
                if given is not None and channels is not None and len(given) != channels:
                    problems.add(f"{key}.{stat}", f"gives {len(given)} value(s) for {channels} channel(s) (data.shape {list(data.shape)})")
            if split == "eval" and transform.random:
                problems.add(key, f"{name} is random: evaluation takes deterministic transforms only (put it in data.transforms.train)")
            if shape is not None and hasattr(transform, "shape"):
                try:
                    shape = transform.shape(shape)
                except ValueError as error:
                    problems.add(f"{key}.{str(error).split(':')[0]}", str(error).split(": ", 1)[1])
                    shape = None
        ends[split] = shape
    if image is not None and None not in ends.values() and ends["train"] != ends["eval"]:
        problems.add("data.transforms", f"train ends with images of shape {list(ends['train'])} and eval with {list(ends['eval'])}: the model "
                                        "takes one shape (resize or center_crop both lists alike)")


def _check_tokens(data: DataSpec, problems: Problems) -> None:
    """data=tokens: a language model over windows of block_size ids from a vocabulary of vocab_size."""
    check_choice(data.dtype, TOKEN_DTYPES, "data.dtype", problems)
    for key, value in (("data.block_size", data.block_size), ("data.vocab_size", data.vocab_size)):
        if value is None:
            problems.add(key, "required for data.name=tokens")
        else:
            _check_positive(value, key, problems)
    if data.task != "language_model":
        problems.add("data.task", f"data.name=tokens is next-token prediction: expected language_model, got {data.task!r}")
    if data.block_size is not None and data.num_features != data.block_size:
        problems.add("data.num_features", f"is {data.num_features} but data.block_size is {data.block_size}: a window's ids are the features")
    if data.vocab_size is not None and data.num_outputs != data.vocab_size:
        problems.add("data.num_outputs", f"is {data.num_outputs} but data.vocab_size is {data.vocab_size}: a language model outputs a score per id")


def parse_tracker(tracker: TrackerConfig | None, problems: Problems) -> TrackerSpec | None:
    if tracker is None:
        return None
    spec = freeze(tracker, TrackerSpec)
    check_choice(spec.name, TRACKERS, "tracker.name", problems)
    if not isinstance(spec.uri, str) or not spec.uri:
        problems.add("tracker.uri", f"expected MLflow's tracking URI (sqlite:///mlflow.db, http://host:5000, ...), got {spec.uri!r}")
    if spec.experiment is not None and not str(spec.experiment).strip():
        problems.add("tracker.experiment", "expected an experiment name, or null")
    return spec


def check_trainer(trainer: TrainerSpec, problems: Problems) -> None:
    _check_positive(trainer.epochs, "trainer.epochs", problems)
    _check_positive(trainer.max_steps, "trainer.max_steps", problems, allow_zero=True)
    _check_positive(trainer.batch_size, "trainer.batch_size", problems)
    _check_positive(trainer.accumulate_grad_batches, "trainer.accumulate_grad_batches", problems)
    if trainer.ema_decay is not None and not 0.0 < trainer.ema_decay < 1.0:
        problems.add("trainer.ema_decay", f"expected null or a number strictly between 0 and 1 (0.999 is common), got {trainer.ema_decay}")
    _check_positive(trainer.log_every, "trainer.log_every", problems)
    _check_positive(trainer.hist_every, "trainer.hist_every", problems, allow_zero=True)
    _check_positive(trainer.threads, "trainer.threads", problems, allow_zero=True)
    _check_positive(trainer.ckpt_every, "trainer.ckpt_every", problems, allow_zero=True)
    _check_positive(trainer.ckpt_every_epochs, "trainer.ckpt_every_epochs", problems, allow_zero=True)
    _check_positive(trainer.keep_last, "trainer.keep_last", problems)
    check_choice(trainer.dtype, DTYPES, "trainer.dtype", problems)
    if trainer.autocast is not None:
        if trainer.autocast not in AUTOCAST:
            problems.add("trainer.autocast", f"expected null, bfloat16 or float16, got {trainer.autocast!r};{suggest(str(trainer.autocast), AUTOCAST)}".rstrip(";"))
        elif trainer.dtype != "float32":
            problems.add("trainer.autocast", f"autocast computes in {trainer.autocast} from float32 weights; trainer.dtype is {trainer.dtype} "
                                             "(set trainer.dtype=float32, or trainer.autocast=null)")
    check_choice(trainer.progress, PROGRESS, "trainer.progress", problems)
    check_choice(trainer.strategy, ("single", "ddp"), "trainer.strategy", problems)
    check_device_name(trainer.device, "trainer.device", problems)


def parse_metrics(declared: list[str] | None, task: str, problems: Problems) -> tuple[str, ...]:
    """`metrics:` as names of the metrics table (null: accuracy for tasks with class ids)."""
    classifies = task in TASKS and TASKS[task].classifies
    if declared is None:
        return ("accuracy",) if classifies else ()
    known, names = metric_names(), []
    for index, name in enumerate(declared):
        if name not in known:
            hint = suggest(str(name), known)
            problems.add(f"metrics[{index}]", f"unknown metric {name!r}; expected one of {', '.join(known)}" + (f";{hint}" if hint else ""))
        elif known[name].classifies and not classifies:
            problems.add(f"metrics[{index}]", f"{name} needs class ids as targets; task {task!r} has none")
        elif name in names:
            problems.add(f"metrics[{index}]", f"{name} is listed twice")
        else:
            names.append(name)
    return tuple(names)


def parse_loss(declared: LossConfig, task: str, problems: Problems) -> LossSpec:
    """`loss:` with `auto` resolved to the task's own; each setting given must belong to the loss and lie in its range."""
    name = TASKS[task].loss if declared.name == "auto" and task in TASKS else declared.name
    if name not in LOSSES:
        check_choice(name, ("auto", *LOSSES), "loss.name", problems)
        return LossSpec()
    loss, settings = LOSSES[name], []
    if task in TASKS and loss.classifies != TASKS[task].classifies:
        fitting = [n for n, other in LOSSES.items() if other.classifies == TASKS[task].classifies]
        targets = "class ids" if loss.classifies else "numbers to regress to"
        problems.add("loss.name", f"{name} needs {targets} as targets; task {task!r} has {'class ids' if TASKS[task].classifies else 'numbers'} "
                                  f"(expected auto, {', '.join(fitting)})")
    for key in (f.name for f in dataclasses.fields(LossConfig) if f.name != "name"):
        value = getattr(declared, key)
        if value is None:
            continue
        if key not in loss.settings:
            takes = [n for n, other in LOSSES.items() if key in other.settings]
            own = f"; {name} takes {', '.join(loss.settings)}" if loss.settings else f"; {name} takes none"
            problems.add(f"loss.{key}", f"{' and '.join(takes)} take{'s' if len(takes) == 1 else ''} it, not {name}{own}")
            continue
        low, high, low_allowed = loss.settings[key]
        if not (value > low or (low_allowed and value == low)) or (high is not None and value > high):
            bounds = f"{'from' if low_allowed else 'above'} {low:g}" + (f" to {high:g}" if high is not None else "")
            problems.add(f"loss.{key}", f"expected a number {bounds}, got {value}")
            continue
        settings.append((key, float(value)))
    return LossSpec(name, tuple(settings))


def parse_monitor(declared: Any, metrics: tuple[str, ...], problems: Problems) -> MonitorSpec | None:
    """Returns trainer.early_stopping as a MonitorSpec (None when not set), adding a problem per bad key."""
    if declared is None:
        return None
    key = "trainer.early_stopping"
    if not isinstance(declared, dict):
        problems.add(key, f"expected a mapping such as {{metric: val_loss, mode: min, patience: 3, min_delta: 0.0}}, got {declared!r}")
        return None
    known = ("metric", "mode", "patience", "min_delta")
    for unknown in sorted(set(declared) - set(known)):
        problems.add(f"{key}.{unknown}", f"unknown key;{suggest(str(unknown), list(known)) or ' it takes: ' + ', '.join(known)}")
    metric = declared.get("metric", "val_loss")
    available = ["val_loss", "train_loss", *(f"val_{name}" for name in metrics)]
    if metric not in available:
        hint = suggest(str(metric), available) or f" this run logs: {', '.join(available)}"
        problems.add(f"{key}.metric", f"{metric!r} is not a metric of this run;{hint}")
        metric = "val_loss"
    better = METRICS[metric[4:]].mode if metric.startswith("val_") and metric[4:] in METRICS else "min"
    mode = declared.get("mode", better)
    if mode not in ("min", "max"):
        problems.add(f"{key}.mode", f"expected min or max, got {mode!r}")
    patience, min_delta = declared.get("patience", 3), declared.get("min_delta", 0.0)
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        problems.add(f"{key}.patience", f"expected a whole number of evaluations >= 1, got {patience!r}")
    if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or min_delta < 0:
        problems.add(f"{key}.min_delta", f"expected a number >= 0, got {min_delta!r}")
    return MonitorSpec(str(metric), str(mode), patience if isinstance(patience, int) else 3,
                       float(min_delta) if isinstance(min_delta, (int, float)) else 0.0)


def check_device_name(name: Any, key: str, problems: Problems) -> bool:
    """Adds a problem unless `name` is a device name this tool knows (auto, cpu, cuda, cuda:N, mps)."""
    if isinstance(name, str) and DEVICE_FORM.match(name):
        return True
    problems.add(key, f"expected auto, cpu, cuda, cuda:N or mps, got {name!r}")
    return False


def parse_callbacks(declared: Any, problems: Problems) -> tuple[CallbackSpec, ...]:
    """Returns trainer.callbacks (names, or {name: N, <argument>: value}) checked against the registered
    callbacks and their constructors, adding a problem per bad entry."""
    if not isinstance(declared, list):
        problems.add("trainer.callbacks", f"expected a list of callback names or {{name: ..., <argument>: ...}} mappings, got {declared!r}")
        return ()
    known, parsed = callback_types(), []
    for index, item in enumerate(declared):
        key = f"trainer.callbacks[{index}]"
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            name, args = item["name"], {k: v for k, v in item.items() if k != "name"}
        elif isinstance(item, str):
            name, args = item, {}
        else:
            problems.add(key, f"expected a callback name or {{name: ..., <argument>: ...}}, got {item!r}")
            continue
        if name not in known:
            hint = suggest(name, known) or (" registered: " + ", ".join(sorted(known)) if known else
                                            " none is registered (runner.register_callback, or a `runner.callbacks` entry point)")
            problems.add(f"{key}.name" if isinstance(item, dict) else key, f"unknown callback {name!r};{hint}")
            continue
        try:
            inspect.signature(known[name]).bind(**args)
        except TypeError as error:
            problems.add(key, f"{name}: {error}")
            continue
        parsed.append(CallbackSpec(name, tuple(args.items())))
    return tuple(parsed)

