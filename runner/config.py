"""The config schema (typed dataclasses registered with Hydra) and `compose`.

Values live in conf/*.yaml; the schema lives here, so a misspelt key or a value of the
wrong type fails at compose time with the key named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig


def conf_dir() -> Path:
    """Returns the directory holding the Hydra config groups.

    A wheel carries it as runner/conf; a source checkout or editable install has it at the
    repository's top level, beside the package.
    """
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"runner's conf/ directory was not found beside {package}")


@dataclass
class ModelConfig:
    name: str = MISSING
    # Layer name -> {type: <registered class>, <constructor args>...}, in forward order.
    layers: Dict[str, Any] = MISSING
    # Tensor-level ties: [{target: dec.weight, source: enc.weight, transpose: false}].
    ties: List[Any] = field(default_factory=list)
    # Globs of tensors whose requires_grad is False (never optimized, never changed).
    frozen: List[str] = field(default_factory=list)
    # Globs of parameters turned into buffers: [{match: glob, persistent: true}].
    buffers: List[Any] = field(default_factory=list)


@dataclass
class InitConfig:
    name: str = "default"
    # Every trainable tensor must be reached by some rule.
    strict: bool = False
    # Ordered rules; later rules override earlier ones for the same tensor.
    rules: List[Any] = field(default_factory=list)


@dataclass
class DataConfig:
    name: str = "digits"  # digits | synthetic | file
    task: str = "classification"  # classification | regression
    num_features: int = 64
    num_outputs: int = 10
    val_fraction: float = 0.2
    # The split has its own seed so that every job of a sweep sees the same split.
    split_seed: int = 0
    # synthetic
    num_samples: int = 2000
    noise: float = 0.1
    # file: .npz, .csv or .pt holding features and targets
    path: Optional[str] = None
    features_key: str = "features"
    targets_key: str = "targets"


@dataclass
class SchedulerConfig:
    name: str = "none"  # none | step | cosine | warmup_cosine (stepped once per optimizer step)
    step_size: int = 100  # step: multiply lr by gamma every step_size steps
    gamma: float = 0.5
    warmup_steps: int = 0  # warmup_cosine: linear from lr/100 to lr, then cosine
    min_lr: float = 0.0  # cosine floor


@dataclass
class OptimConfig:
    name: str = "adam"  # sgd | adam | adamw
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    # [{match: glob or [globs], lr: ..., weight_decay: ..., momentum: ..., betas: ...}]; a group
    # without `match` takes every tensor no other group names. Each tensor in exactly one group.
    param_groups: List[Any] = field(default_factory=list)
    # Biases and normalization-layer weights get weight_decay 0.
    no_decay_bias_and_norm: bool = False
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    # Clip the global gradient L2 norm to this value (null: no clipping).
    clip_grad_norm: Optional[float] = None


@dataclass
class TrainerConfig:
    epochs: int = 20
    # Stops after this many optimizer steps when set (overrides epochs).
    max_steps: Optional[int] = None
    batch_size: int = 64
    log_every: int = 10
    # Per-tensor gradient statistics on logged steps (grad_norm/<name>, ... in metrics.jsonl).
    grad_stats: bool = True
    # Weight and gradient histograms to TensorBoard every N steps (0: never).
    hist_every: int = 100
    tensorboard: bool = True
    plots: bool = True
    # Checkpoint every N steps (0: only at the end); keep the newest `keep_last`.
    ckpt_every: int = 0
    keep_last: int = 3
    loss: str = "auto"  # auto | cross_entropy | mse | l1 | smooth_l1
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "float32"  # float32 | float64 | bfloat16
    deterministic: bool = True
    # Wrap the model in torch.compile for training (see the README's benchmarks for when it pays).
    compile: bool = False
    # single | ddp (launch with torchrun --nproc_per_node=N -m runner trainer.strategy=ddp)
    strategy: str = "single"
    # torch threads (0: torch's default; under the joblib launcher, the cores shared among its jobs).
    threads: int = 0
    progress: str = "auto"  # auto (a bar on a terminal) | bar | log | off


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


def register_schema() -> None:
    """Registers the schema so that conf/config.yaml can name it in its defaults list."""
    ConfigStore.instance().store(name="runner_schema", node=RunConfig)


register_schema()


def compose(overrides: Optional[List[str]] = None) -> DictConfig:
    """Returns the composed config for these overrides, exactly as `python -m runner` sees it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides or []))
