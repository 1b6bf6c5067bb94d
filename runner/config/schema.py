"""The config schema: typed dataclasses registered with Hydra (runner.config.compose composes with it).

Values live in conf/*.yaml; the schema lives here, so a misspelt key or a value of the
wrong type fails at compose time with the key named.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


def conf_dir() -> Path:
    """Returns the directory holding the Hydra config groups.

    A wheel carries it as runner/conf; a source checkout or editable install has it at the
    repository's top level, beside the package.
    """
    package = Path(__file__).resolve().parents[1]  # runner/
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"runner's conf/ directory was not found beside {package}")


def flag(default: bool) -> Any:
    """A boolean field: typed Any so that OmegaConf does not coerce `3` or 'no' to a bool; the spec
    refuses anything but true or false in every field made with flag()."""
    return field(default=default, metadata={"flag": True})


@dataclass
class ModelConfig:
    name: str = MISSING
    # The model's own hyper-parameters, referenced elsewhere as ${model.vars.<name>} (and in
    # arithmetic: ${floordiv:${model.vars.n_embd},${model.vars.n_head}}); resolved before the spec.
    vars: Dict[str, Any] = field(default_factory=dict)
    # Layer name -> {type: <registered class>, <constructor args>...}, in forward order. (Typed Any:
    # the spec names a numbered layer written unquoted, `0:`, rather than OmegaConf's key-type error.)
    layers: Any = MISSING
    # Tensor-level ties: [{target: dec.weight, source: enc.weight, transpose: false | true | [i, j]}].
    ties: List[Any] = field(default_factory=list)
    # Globs of tensors whose requires_grad is False (never optimized, never changed).
    frozen: List[str] = field(default_factory=list)
    # Globs of parameters turned into buffers: [{match: glob, persistent: true}].
    buffers: List[Any] = field(default_factory=list)
    # Tensors the model owns itself: name -> {shape: [...], kind: parameter | frozen | buffer, persistent: true}.
    tensors: Dict[str, Any] = field(default_factory=dict)
    # The layer (or tensor) whose value the model returns; null: the last layer.
    output: Optional[str] = None
    # Globs of module names kept in eval mode while training (frozen BatchNorm statistics).
    eval_modules: List[str] = field(default_factory=list)


@dataclass
class InitConfig:
    name: str = "default"
    # Every trainable tensor must be reached by some rule.
    strict: Any = flag(False)
    # Ordered rules; later rules override earlier ones for the same tensor.
    rules: List[Any] = field(default_factory=list)


@dataclass
class TransformsConfig:
    # Each a list of {name: <transform>, <argument>: value} (or a bare name), applied in order to image
    # batches: random_crop {padding}, horizontal_flip {p}, normalize {mean, std}. eval: deterministic ones only.
    train: List[Any] = field(default_factory=list)
    eval: List[Any] = field(default_factory=list)


@dataclass
class LoaderConfig:
    """How training batches are served. num_workers 0: slices of the data already on the device (the
    fast path for data that fits in memory); > 0: a torch DataLoader whose worker processes gather
    and transform each batch, the same batches in the same order; auto: chosen by the rule in
    docs/config.md (runner.data.loader.serving)."""

    num_workers: Any = "auto"  # auto, or a number >= 0 (typed Any: OmegaConf has no int-or-str)
    pin_memory: Any = flag(False)  # page-locked batches, copied to a CUDA device without blocking
    persistent_workers: Any = flag(False)  # keep the workers between epochs
    prefetch_factor: Optional[int] = None  # batches each worker loads ahead (null: torch's default, 2)


@dataclass
class DataConfig:
    name: str = "digits"  # digits | synthetic | text | file | parquet | mnist | cifar10 | cifar100 | image_folder | tokens
    task: str = "classification"  # classification | regression | reconstruction | language_model
    num_features: int = 64
    num_outputs: int = 10
    # One sample's feature shape, e.g. [3, 32, 32]; null: a vector of num_features. The data is
    # reshaped to it where only the layout differs (images as flat rows: data.shape=[784]).
    shape: Optional[List[int]] = None
    # The held-out share; null: the source's own test split (mnist, cifar10, cifar100, image_folder's val/, tokens).
    val_fraction: Optional[float] = 0.2
    # The split has its own seed so that every job of a sweep sees the same split.
    split_seed: int = 0
    # synthetic
    num_samples: int = 2000
    noise: float = 0.1
    # file: .npz, .csv or .pt holding features and targets; parquet: a .parquet file
    path: Optional[str] = None
    features_key: str = "features"
    targets_key: str = "targets"
    # mnist, cifar10, cifar100, image_folder, tokens: the directory holding the dataset's files
    root: Optional[str] = None
    # tokens: the window length, the number of distinct ids, and the ids' type in the files
    block_size: Optional[int] = None
    vocab_size: Optional[int] = None
    dtype: Optional[str] = None  # uint16 | uint32 (data=tokens sets uint16)
    transforms: TransformsConfig = field(default_factory=TransformsConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    # parquet: the feature columns (numbers, or one column of equal-length lists) and the target column
    features: Optional[List[str]] = None
    target: Optional[str] = None


@dataclass
class SchedulerConfig:
    name: str = "none"  # none | step | cosine | warmup_cosine (stepped once per optimizer step)
    step_size: int = 100  # step: multiply lr by gamma every step_size steps
    gamma: float = 0.5
    warmup_steps: int = 0  # warmup_cosine: linear from lr/100 to lr, then cosine
    min_lr: float = 0.0  # cosine floor


@dataclass
class OptimConfig:
    name: str = "adam"  # a torch.optim class, lower-cased: sgd | adam | adamw | rmsprop | ...
    lr: float = 1e-3
    # The most used constructor arguments; null means the optimizer's own default. Any other
    # argument the class takes is set with `+optim.<arg>=...` (e.g. +optim.eps=1e-6) and checked
    # against the class's signature.
    weight_decay: Optional[float] = None
    momentum: Optional[float] = None
    betas: Optional[List[float]] = None
    # [{name: ..., match: glob or [globs], <any constructor argument>...}]; a group without `match`
    # takes every tensor no other group names. Each tensor in exactly one group.
    param_groups: List[Any] = field(default_factory=list)
    # Biases and normalization-layer weights get weight_decay 0.
    no_decay_bias_and_norm: Any = flag(False)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    # Clip the global gradient L2 norm to this value (null: no clipping).
    clip_grad_norm: Optional[float] = None


@dataclass
class TrainerConfig:
    epochs: int = 20
    # Stops after this many optimizer steps when set (overrides epochs).
    max_steps: Optional[int] = None
    batch_size: int = 64
    # Batches whose gradients are summed into one optimizer step (Lightning's name): the step equals
    # one step on accumulate_grad_batches x batch_size rows.
    accumulate_grad_batches: int = 1
    log_every: int = 50
    # Per-tensor gradient statistics on logged steps (grad_norm/<name>, ... in metrics.jsonl).
    grad_stats: Any = flag(True)
    # Weight and gradient histograms to TensorBoard every N steps (0: never).
    hist_every: int = 100
    # Per-layer output mean and std on logged steps (act_mean/<layer>, act_std/<layer>).
    activation_stats: Any = flag(True)
    # Globs choosing which tensors and layers get statistics and histograms ([*]: all).
    watch: List[str] = field(default_factory=lambda: ["*"])
    tensorboard: Any = flag(True)
    plots: Any = flag(True)
    # Checkpoint every N steps (0: none in between), and at the end of every N-th epoch (0: none);
    # the final step is always saved; keep the newest `keep_last`.
    ckpt_every: int = 0
    ckpt_every_epochs: int = 1
    keep_last: int = 3
    # An exponential moving average of the weights, evaluated beside them (null: none).
    ema_decay: Optional[float] = None
    # Stop when a metric stops improving: {metric: val_loss, mode: min, patience: 3, min_delta: 0.0}.
    early_stopping: Any = None
    # Keep the checkpoint with the best monitored value (early_stopping's metric, else val_loss).
    keep_best: Any = flag(False)
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "float32"  # float32 | float64 | bfloat16
    # Forward pass and loss under torch.autocast in this dtype (null: off); weights stay in `dtype`.
    # float16 (CUDA only) adds loss scaling; steps whose gradients overflow are skipped and counted.
    autocast: Optional[str] = None  # null | bfloat16 | float16
    deterministic: Any = flag(True)
    # Wrap the model in torch.compile for training (docs/benchmarks.md says when it pays).
    compile: Any = flag(False)
    # single | ddp (launch with torchrun --nproc_per_node=N -m runner trainer.strategy=ddp)
    strategy: str = "single"
    # torch threads (0: torch's default; under the joblib launcher, the cores shared among its jobs).
    threads: int = 0
    progress: str = "auto"  # auto (a bar on a terminal) | bar | log | off
    # Callbacks of your own, by registered name (runner.register_callback or a `runner.callbacks` entry point):
    # [name, ...] or [{name: N, <constructor argument>: value}, ...]; they run after the built-in ones.
    callbacks: List[Any] = field(default_factory=list)


@dataclass
class LossConfig:
    """`loss:`, the training loss (validation's val_loss is the same loss on the validation split)."""

    # auto: the task's own (cross_entropy for class ids, mse otherwise) | cross_entropy | mse | l1 | smooth_l1 | huber
    name: str = "auto"
    # Each setting belongs to one loss; null: that loss's own default.
    label_smoothing: Optional[float] = None  # cross_entropy: 0 (one-hot targets) to 1
    beta: Optional[float] = None  # smooth_l1: where it turns from squared to linear (>= 0; torch's default 1.0)
    delta: Optional[float] = None  # huber: the same for huber (> 0; torch's default 1.0)


@dataclass
class TrackerConfig:
    """`+tracker=mlflow`: where a run's parameters, metrics and files are also sent."""

    name: str = "mlflow"
    # MLflow's tracking URI: a SQLite store in the working directory unless given (http://..., sqlite:///...).
    uri: str = "sqlite:///mlflow.db"
    # The MLflow experiment (null: the sweep directory for a multirun job, else `runner`).
    experiment: Optional[str] = None


@dataclass
class RunConfig:
    model: ModelConfig = MISSING
    init: InitConfig = MISSING
    data: DataConfig = MISSING
    optim: OptimConfig = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seed: int = 0
    # A run directory (or checkpoint) to continue from, with its own saved config.
    resume: Optional[str] = None
    # Also track the run elsewhere (`+tracker=mlflow`); null: the run directory only.
    tracker: Optional[TrackerConfig] = None
    # Evaluation metrics, each logged as val_<name>: accuracy, top5, perplexity, or a registered one;
    # null: [accuracy] for tasks with class ids (classification, language_model), else none.
    metrics: Optional[List[str]] = None
    loss: LossConfig = field(default_factory=LossConfig)


# Keys that have moved: old dotted key -> where it lives now (a saved run's config is read with them moved).
MOVED = {"trainer.loss": "loss.name"}


def upgraded(saved: dict) -> dict:
    """Returns a saved run's config with its moved keys in their new places (the same meaning)."""
    saved = {**saved}
    for old, new in MOVED.items():
        section, _, key = old.rpartition(".")
        if key in saved.get(section, {}):
            value = {**saved[section]}
            moved = value.pop(key)
            to_section, _, to_key = new.rpartition(".")
            saved[section] = value
            saved[to_section] = {**saved.get(to_section, {}), to_key: moved}
    return saved


# Each mapping of the schema, by its dotted path ("" is the top level).
SECTIONS = {"": RunConfig, "model": ModelConfig, "init": InitConfig, "data": DataConfig, "optim": OptimConfig,
            "optim.scheduler": SchedulerConfig, "trainer": TrainerConfig, "tracker": TrackerConfig,
            "loss": LossConfig, "data.loader": LoaderConfig}


def key_home(section: str, key: str) -> str | None:
    """The dotted key a misplaced `section.key` belongs at: the one section directly inside `section` that has `key`
    (`data.num_workers` -> `data.loader.num_workers`, `epochs` -> `trainer.epochs`), else the one other section
    anywhere that has it (`data.ckpt_every_epochs` -> `trainer.ckpt_every_epochs`, `data.seed` -> `seed`); None
    when none, or several, has it (`name`)."""
    def having(sections: list[str]) -> list[str]:
        return [f"{name}.{key}" if name else key for name in sections if key in {f.name for f in fields(SECTIONS[name])}]

    depth = section.count(".") + 1 if section else 0
    inside = having([name for name in SECTIONS if (name.startswith(f"{section}.") if section else bool(name)) and name.count(".") == depth])
    homes = inside or having([name for name in SECTIONS if name != section])
    return homes[0] if len(homes) == 1 else None


def register_schema() -> None:
    """Registers the schema so that conf/config.yaml can name it in its defaults list."""
    ConfigStore.instance().store(name="runner_schema", node=RunConfig)


register_schema()
