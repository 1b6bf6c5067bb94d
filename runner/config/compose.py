"""`compose`: the conf/ groups and a user's overrides made into one config, with the schema's checks, the
arithmetic resolvers model files use (${add:...}, ${div:...}, ...), and Hydra's errors turned into ours.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator, List, Optional

from omegaconf import DictConfig, OmegaConf, open_dict

from runner.config.schema import MOVED, SECTIONS, OptimConfig, conf_dir, key_home


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


@dataclass(frozen=True)
class CommandLine:
    """An entry point's command line as `python -m runner` reads it: Hydra's config options, then overrides."""

    overrides: List[str]
    config_dir: Optional[Path] = None  # --config-path / -cp: another primary config directory
    config_name: str = "config"  # --config-name / -cn
    search: tuple = ()  # --config-dir / -cd: directories searched before conf/ (a user's own groups and options)
    help: bool = False  # --help / -h

    @property
    def all_overrides(self) -> List[str]:
        """The overrides, with `hydra.searchpath` for --config-dir."""
        if not self.search:
            return list(self.overrides)
        return [f"hydra.searchpath=[{','.join(f'file://{path}' for path in self.search)}]", *self.overrides]


OPTIONS = {"--config-path": "config_dir", "-cp": "config_dir", "--config-name": "config_name", "-cn": "config_name",
           "--config-dir": "search", "-cd": "search"}


def parse_command_line(argv: List[str], program: str, other_options: bool = False) -> CommandLine:
    """Reads Hydra's config options (`--config-dir DIR` or `--config-dir=DIR`, ...) and `--help`; the rest are
    overrides. Any other option is a config error naming it, or with `other_options` (Hydra's own command
    line: -m, --cfg job, ...) left out, its value, if any, among the overrides."""
    from runner.errors import ConfigError, Problem, suggest

    found: dict = {"search": []}
    overrides, help_wanted, rest = [], False, list(argv)
    while rest:
        arg = rest.pop(0)
        name, has_value, value = arg.partition("=")
        if arg in ("-h", "--help"):
            help_wanted = True
        elif name in OPTIONS:
            if not has_value:
                if not rest:
                    raise ConfigError([Problem(name, "expected a value after it")])
                value = rest.pop(0)
            field_name = OPTIONS[name]
            if field_name in ("search", "config_dir") and not Path(value).is_dir():  # Hydra would skip or refuse it, wordily
                raise ConfigError([Problem(name, f"no such directory: {value}")])
            if field_name == "search":
                found["search"].append(Path(value).resolve())
            else:
                found[field_name] = Path(value).resolve() if field_name == "config_dir" else value
        elif arg.startswith("-") and other_options:
            continue
        elif arg.startswith("-"):
            known = ["--help", *OPTIONS]
            raise ConfigError([Problem(name, f"not an option of {program};{suggest(name, known) or ' it takes: ' + ', '.join(known)}")])
        else:
            overrides.append(arg)
    return CommandLine(overrides, found.get("config_dir"), found.get("config_name", "config"), tuple(found["search"]), help_wanted)


def compose(overrides: Optional[List[str]] = None, config_dir: Optional[Path] = None, config_name: str = "config") -> DictConfig:
    """Returns the composed config for these overrides, exactly as `python -m runner` sees it.

    `config_dir` names another primary config directory (a resumed run's, see `resume_composition`),
    and `config_name` another primary config in it.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    from runner.errors import ConfigError, Problem

    overrides = list(overrides or [])
    try:
        with initialize_config_dir(config_dir=str(config_dir or conf_dir()), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    except HydraException as error:  # a bad override or option: the same report as every other config error
        raise ConfigError([hydra_problem(error, overrides, config_dir)]) from None
    except AssertionError as error:  # OmegaConf's refusal to set a key inside a section that is null (tracker, unless selected)
        raise ConfigError(into_null_section(overrides) or [Problem("overrides", f"{error}")]) from None
    except Exception as error:  # a YAML syntax error in a config file: named by file, line and column
        problem = yaml_problem(error)
        if problem is None:
            raise
        raise ConfigError([problem]) from None
    runtime = cfg.hydra.runtime
    problems = model_file_problems(dict(runtime.choices), [dict(source) for source in runtime.config_sources])
    with open_dict(cfg):
        del cfg["hydra"]
    problems += merged_overrides(overrides, cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def yaml_problem(error: BaseException) -> Any:
    """A YAML syntax error (anywhere in the exception's chain) as a Problem named `file:line:column`, else None."""
    import yaml

    from runner.errors import Problem

    found: BaseException | None = error
    while found is not None and not isinstance(found, yaml.MarkedYAMLError):
        found = found.__cause__ or found.__context__
    if found is None or found.problem_mark is None:
        return None
    mark = found.problem_mark
    return Problem(f"{mark.name}:{mark.line + 1}:{mark.column + 1}", f"YAML syntax: {found.problem}" + (f" ({found.context})" if found.context else ""))


def sweep_values(override: str) -> list[str] | None:
    """A sweep override as one override a value (`seed=0,1` -> [`seed=0`, `seed=1`], `x=[a],[b]` -> [`x=[a]`, `x=[b]`]),
    read by Hydra's own parser; [the override] when it sweeps nothing; None for what cannot be read alone (`glob(*)`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_override(override)
        if not parsed.is_sweep_override():
            return [override]
        return [f"{parsed.get_key_element()}={value}" for value in parsed.sweep_string_iterator()]
    except Exception:  # noqa: BLE001 - a glob needs the config loader; a bad override: Hydra reported it
        return None


def first_value(override: str) -> str | None:
    """A sweep override at its first value (`seed=0,1` -> `seed=0`); the override itself when it sweeps nothing;
    None for what cannot be read alone (`glob(*)`)."""
    values = sweep_values(override)
    return values[0] if values else None


def into_null_section(overrides: List[str]) -> list:
    """A problem for each override that sets a key of an optional section (tracker) the config leaves null."""
    from runner.errors import Problem

    sections = {"tracker": "+tracker=mlflow"}  # section -> the option that turns it on
    found = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        section = key.split(".", 1)[0]
        if section in sections and "." in key:
            found.append(Problem(key, f"{section} is off unless selected: add {sections[section]} (e.g. python -m runner {sections[section]} {override.lstrip('+~')})"))
    return found


def _value_of(overrides: List[str], key: str) -> str:
    """The value the last override of `key` gives, as typed."""
    return next((o.split("=", 1)[1] for o in reversed(overrides) if o.split("=", 1)[0].lstrip("+~") == key), "")


def hydra_problem(error: Exception, overrides: List[str], config_dir: Optional[Path] = None) -> Any:
    """Returns Hydra's refusal of an override or option as a Problem naming its key, without Hydra's traceback."""
    from runner.errors import Problem, suggest

    cause = error.__cause__
    key = getattr(cause, "full_key", None) or ""
    lines = [line for line in str(error).splitlines() if line.strip()]
    found = re.search(r"^In '([^']+)': .*\n(.+)\n\s+full_key: (\S+)", str(error), re.MULTILINE)
    if not key and found:  # a key in a config file (not on the command line) the schema does not have
        source, message, key = found.groups()
        if key in MOVED:
            return Problem(key, f"moved: set {MOVED[key]} instead (in the config file {source}.yaml)")
        return Problem(key, f"{message.strip()} (in the config file {source}.yaml)")
    if key in MOVED:
        return Problem(key, f"moved: set {MOVED[key]} instead")
    if key in SECTIONS and "Invalid type assigned" in str(cause):  # `loss=cross_entropy`: a value where a mapping belongs
        settings = [f.name for f in fields(SECTIONS[key])]
        named = f"; by name alone: {key}.name={_value_of(overrides, key)}" if "name" in settings else ""
        return Problem(key, f"expected a mapping of {key} settings ({', '.join(settings)}), set key by key ({key}.{settings[0]}=...){named}")
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
        home = key_home(parent, name) if schema is not None else None
        hint = (f"it belongs at {home}" if home else "") or suggest(name, known).strip() or (f"it has: {', '.join(known)}" if known else "")
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

        from runner.registry.tables import layer_types

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
    keeps fc1, fc2, ... beside `a`). A mapping given on the command line must be the whole mapping
    (keys left null excepted)."""
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
        # A key left null (a schema default such as loss.beta) keeps nothing the user did not give.
        kept = [str(k) for k, v in OmegaConf.to_container(composed, resolve=False).items() if k not in override.value() and v is not None]
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
