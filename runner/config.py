"""The config schema (typed dataclasses registered with Hydra) and `compose`.

Values live in conf/*.yaml; the schema lives here, so a misspelt key or a value of the
wrong type fails at compose time with the key named.
"""

from __future__ import annotations

import json
import math
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict


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
    log_every: int = 10
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
    # Checkpoint every N steps (0: only at the end); keep the newest `keep_last`.
    ckpt_every: int = 0
    keep_last: int = 3
    # An exponential moving average of the weights, evaluated beside them (null: none).
    ema_decay: Optional[float] = None
    # Stop when a metric stops improving: {metric: val_loss, mode: min, patience: 3, min_delta: 0.0}.
    early_stopping: Any = None
    # Keep the checkpoint with the best monitored value (early_stopping's metric, else val_loss).
    keep_best: Any = flag(False)
    loss: str = "auto"  # auto | cross_entropy | mse | l1 | smooth_l1
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


# Each mapping of the schema, by its dotted path ("" is the top level).
SECTIONS = {"": RunConfig, "model": ModelConfig, "init": InitConfig, "data": DataConfig, "optim": OptimConfig,
            "optim.scheduler": SchedulerConfig, "trainer": TrainerConfig, "tracker": TrackerConfig}


def register_schema() -> None:
    """Registers the schema so that conf/config.yaml can name it in its defaults list."""
    ConfigStore.instance().store(name="runner_schema", node=RunConfig)


register_schema()


def _number(op: str, value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"${{{op}:...}} takes numbers, got {value!r}")
    return value


def _arithmetic(op: str, fn: Any, arity: int | None) -> Any:
    def resolve(*args: Any) -> float | int:
        if arity is not None and len(args) != arity:
            raise ValueError(f"${{{op}:...}} takes {arity} argument{'s' if arity > 1 else ''}, got {len(args)}")
        return fn(*(_number(op, a) for a in args))

    return resolve


def _floordiv(a: float | int, b: float | int) -> float | int:
    if isinstance(a, int) and isinstance(b, int) and a % b:
        raise ValueError(f"${{floordiv:{a},{b}}}: {b} does not divide {a} (use div for a fraction)")
    return a // b


# Safe arithmetic for model files, as OmegaConf resolvers: numbers in, a number out; no eval.
ARITHMETIC = {
    "add": _arithmetic("add", lambda *xs: sum(xs), None),
    "sub": _arithmetic("sub", lambda a, b: a - b, 2),
    "mul": _arithmetic("mul", lambda *xs: math.prod(xs), None),
    "div": _arithmetic("div", lambda a, b: a / b, 2),
    "floordiv": _arithmetic("floordiv", _floordiv, 2),
    "pow": _arithmetic("pow", lambda a, b: a ** b, 2),
    "sqrt": _arithmetic("sqrt", math.sqrt, 1),
}


def register_resolvers() -> None:
    """Registers runner's arithmetic resolvers (${add:...}, ${div:...}, ...) once per process."""
    for name, fn in ARITHMETIC.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()


def compose(overrides: Optional[List[str]] = None, config_dir: Optional[Path] = None) -> DictConfig:
    """Returns the composed config for these overrides, exactly as `python -m runner` sees it.

    `config_dir` names another primary config directory (a resumed run's, see `resume_composition`).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from runner.errors import ConfigError

    from hydra.errors import HydraException

    overrides = list(overrides or [])
    try:
        with initialize_config_dir(config_dir=str(config_dir or conf_dir()), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=overrides, return_hydra_config=True)
    except HydraException as error:  # a bad override or option: the same report as every other config error
        raise ConfigError([hydra_problem(error, overrides, config_dir)]) from None
    runtime = cfg.hydra.runtime
    problems = model_file_problems(dict(runtime.choices), [dict(source) for source in runtime.config_sources])
    with open_dict(cfg):
        del cfg["hydra"]
    problems += merged_overrides(overrides, cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def hydra_problem(error: Exception, overrides: List[str], config_dir: Optional[Path] = None) -> Any:
    """Returns Hydra's refusal of an override or option as a Problem naming its key, without Hydra's traceback."""
    from runner.errors import Problem, suggest

    cause = error.__cause__
    key = getattr(cause, "full_key", None) or ""
    lines = [line for line in str(error).splitlines() if line.strip()]
    if key and "not in" in str(cause):  # a misspelt key: Hydra would advise `+key=`, which only adds the typo
        parent, _, name = key.rpartition(".")
        given = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
        if parent in given:  # `model.layers={...}`: a mapping merged into the one the config has
            how = ("declare a model's layers on the empty model: model=custom '+model.layers={...}'" if parent == "model.layers"
                   else f"a key it does not have is added with +{key}=...")
            return Problem(key, f"{name!r} is not in the composed {parent}; a mapping given on the command line is merged key by key: {how}")
        schema = SECTIONS.get(parent)
        known = [f.name for f in fields(schema)] if schema is not None else _keys_without(overrides, key, parent, config_dir)
        if schema is None and name in known:  # a constructor argument the layer does not set yet
            return Problem(key, f"{parent} does not set {name!r}; add it with +{key}=...")
        hint = suggest(name, known).strip() or (f"it has: {', '.join(known)}" if known else "")
        add = f"an optimizer argument of its own is added with +{key}=..." if parent == "optim" else \
              f"a new key is added with +{key}=..." if schema is None else ""
        return Problem(key, "; ".join(["unknown key", *(part for part in (hint, add) if part)]))
    if key:
        return Problem(key, str(cause).splitlines()[0])
    if lines and lines[0].startswith("In 'config': Could not find"):
        options = [line.strip() for line in lines[2:] if line.startswith("\t") and "provider=" not in line]
        group = lines[0].split("'")[3].split("/")[0] if lines[0].count("'") >= 4 else "config"
        wanted = lines[0].split("'")[3].rpartition("/")[2] if lines[0].count("'") >= 4 else ""
        hint = suggest(wanted, options) or f" available: {', '.join(options)}"
        return Problem(group, f"no option {wanted!r} in {group};{hint}")
    return Problem("overrides", " ".join(lines[:2]))


def _keys_without(overrides: List[str], key: str, parent: str, config_dir: Optional[Path]) -> List[str]:
    """Returns the keys of mapping `parent` as composed without the overrides that name `key` ([] if that fails too)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    rest = [o for o in overrides if not (o.split("=", 1)[0].lstrip("+~") + ".").startswith(key + ".")]
    try:
        with initialize_config_dir(config_dir=str(config_dir or conf_dir()), version_base="1.3"):
            node = OmegaConf.select(hydra_compose(config_name="config", overrides=rest), parent)
    except Exception:  # only a hint is lost
        return []
    if not isinstance(node, DictConfig):
        return []
    keys = [str(k) for k in node]
    if parent.startswith("model.layers.") and isinstance(node.get("type"), str):  # a layer: its constructor's arguments too
        import inspect

        from runner.registry import layer_types

        cls = layer_types().get(node["type"])
        if cls is not None:
            keys += [n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "device", "dtype", *keys)]
    return keys


def model_file_problems(choices: dict, sources: list[dict]) -> list:
    """Returns a problem for a model file that sets anything but the model (`optim:`, `trainer:` or a
    defaults list under `# @package _global_`): the optim group, composed after the model, would
    silently replace its optimizer settings. Such settings belong in an experiment preset."""
    import yaml

    from runner.errors import Problem

    choice = choices.get("model")
    path = next((Path(s["path"]) / "model" / f"{choice}.yaml" for s in sources
                 if s.get("schema") == "file" and (Path(s["path"]) / "model" / f"{choice}.yaml").is_file()), None)
    if choice is None or path is None:
        return []
    text = path.read_text(encoding="utf-8")
    header = next((line.split("@package", 1)[1].strip() for line in text.splitlines()
                   if line.startswith("#") and "@package" in line), "model")
    try:
        body = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return []  # Hydra reported it already
    if header in ("model", "_group_") or not isinstance(body, dict):
        return []
    if header != "_global_":
        return [Problem("model", f"{path}: a model file's package is `model`, not {header!r}")]
    others = sorted(str(k) for k in body if k not in ("model", "defaults"))
    others += ["defaults"] if any(entry != "_self_" for entry in body.get("defaults") or []) else []
    if not others:
        return []
    return [Problem("model", f"{path} sets {', '.join(others)} beside the model; a model file holds only the model (the groups "
                             "composed after it would silently replace those settings): put them in an experiment preset "
                             "(conf/experiment/*.yaml, see experiment=transformer_lm) or on the command line")]


GROUPS = ("data", "model", "init", "optim")
def merged_overrides(overrides: List[str], cfg: DictConfig) -> list:
    """Returns a problem for each mapping override that Hydra merged into a mapping the config
    already had instead of putting it in its place (`+model.layers={a: ...}` on the default model
    keeps fc1, fc2, ... beside `a`). A mapping given on the command line must be the whole mapping."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from runner.errors import Problem

    problems = []
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        if override.is_delete() or override.is_sweep_override() or not isinstance(override.value(), dict):
            continue
        key = override.key_or_group
        composed = OmegaConf.select(cfg, key, default=None)
        if not isinstance(composed, DictConfig):
            continue
        kept = [str(k) for k in composed if k not in override.value()]
        if not kept:
            continue
        how = ("declare a model's layers from the command line on the empty model: model=custom '+model.layers={...}'"
               if key == "model.layers" else f"remove the others with ~{key}.<name>, or set the keys one by one")
        problems.append(Problem(key, f"the override was merged into the existing mapping, which keeps {', '.join(kept)} beside it; {how}"))
    return problems


@contextmanager
def resume_composition(saved: dict, run_dir: Path, overrides: List[str]) -> Iterator[tuple[Path, List[str]]]:
    """Yields (primary config directory, overrides) that compose a resumed run; the directory is
    temporary and gone afterwards.

    Each group's saved values become that group's option `saved`, so a resumed run takes exactly
    the override grammar of a new one: `trainer.epochs=40`, `model=cnn` (a new choice replaces the
    saved model), `+optim.eps=1e-8`. conf/ stays on the search path for the other options.
    Optimizer arguments the schema has no field for (given with `+optim.<arg>=`) cannot live in a
    schema file: they come back as `++optim.<arg>=` overrides, unless `overrides` sets them anew.
    """
    saved_optim = dict(saved.get("optim", {}))
    optim_fields = {f.name for f in fields(OptimConfig)}
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    extras = {k: saved_optim.pop(k) for k in list(saved_optim) if k not in optim_fields}
    restored = [f"++optim.{k}={json.dumps(v)}" for k, v in extras.items() if f"optim.{k}" not in given]
    saved = {**saved, "optim": saved_optim}
    with tempfile.TemporaryDirectory(prefix="runner-resume-") as tmp:
        into = Path(tmp)
        for group in GROUPS:
            (into / group).mkdir()
            OmegaConf.save(OmegaConf.create(saved.get(group, {})), into / group / "saved.yaml")
        primary = {
            "defaults": ["runner_schema", "_self_", *({g: "saved"} for g in GROUPS), {"experiment": None}],
            **{k: v for k, v in saved.items() if k not in GROUPS},
            "hydra": {
                "searchpath": [f"file://{conf_dir()}"],
                "run": {"dir": str(run_dir)},
                "output_subdir": None,  # the run directory already holds its config; Hydra adds nothing
                "job": {"chdir": False},
            },
        }
        OmegaConf.save(OmegaConf.create(primary), into / "config.yaml")
        yield into, [*restored, *overrides, f"resume={run_dir}"]
