"""Config -> spec: every group parsed once into frozen, typed values, every problem named by its key.

Pure: no tensor is made, no file is read, no environment variable or device is consulted. Names
are checked against the registries that implement them (layer classes, init functions and their
value domains, torch.optim signatures, tasks). What needs the module tree (shapes, which tensor
a glob reaches, ties) is the plan's work (plan.py); what needs this machine is machine.py's.

This module is the entry point, `parse`, and the schema-level checks (unknown keys, model.vars,
booleans); each group's grammar is a module of its own: model (with graph, inplace and arguments),
init, optim and trainer, over the frozen types of runner.spec.types.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from runner.config.schema import SECTIONS, OptimConfig, RunConfig, key_home
from runner.errors import ConfigError, Problem, Problems, suggest
from runner.spec.common import field_names, parse_globs
from runner.spec.init import parse_rules
from runner.spec.model import parse_model
from runner.spec.optim import parse_optim
from runner.spec.trainer import check_data, check_trainer, parse_callbacks, parse_loss, parse_metrics, parse_monitor, parse_tracker
from runner.spec.types import DataSpec, InitSpec, LoaderSpec, RunSpec, SchedulerSpec, TrainerSpec, TransformsSpec, freeze


def parse(cfg: DictConfig | dict, problems: Problems) -> RunSpec:
    """Returns the spec of a composed (or saved) config, adding every problem found to `problems`.

    Raises ConfigError at once only when the config cannot be read against the schema at all (a
    section that is not a mapping, a wrong type for a typed key, a required key left out); every
    other problem leaves a spec for the plan to check further.
    """
    container = to_container(cfg)
    referenced = _referenced_vars(cfg) if isinstance(cfg, DictConfig) else None
    wrong = [Problem(name, f"expected a mapping of {name} settings, got {_at(container, name, None)!r}")
             for name in SECTIONS if name and not isinstance(_at(container, name, {}), dict)
             and not (name in OPTIONAL_SECTIONS and _at(container, name, {}) is None)]
    if wrong:  # nothing inside can be read
        raise ConfigError(wrong)
    optim_extras = _check_unknown_keys(container, problems)
    _check_vars(container.get("model", {}), referenced, problems)
    _check_booleans(container, problems)
    try:
        typed: RunConfig = OmegaConf.to_object(with_schema(container))  # type: ignore[assignment]
    except OmegaConfBaseException as error:  # a required key left out (model.name: ???)
        raise ConfigError([*problems.items, _omegaconf_problem(getattr(error, "full_key", None) or "config", error)]) from None
    container["optim"].update(optim_extras)
    data, trainer = freeze(typed.data, DataSpec), freeze(typed.trainer, TrainerSpec)
    data = dataclasses.replace(data, shape=None if data.shape is None else tuple(data.shape),
                               features=None if data.features is None else tuple(data.features),
                               transforms=TransformsSpec(tuple(data.transforms.train), tuple(data.transforms.eval)),
                               loader=freeze(typed.data.loader, LoaderSpec))
    metrics = parse_metrics(typed.metrics, data.task, problems)
    trainer = dataclasses.replace(trainer, watch=parse_globs(list(trainer.watch), "trainer.watch", problems),
                                  early_stopping=parse_monitor(trainer.early_stopping, metrics, problems),
                                  callbacks=parse_callbacks(container.get("trainer", {}).get("callbacks", []), problems))
    check_data(data, problems)
    check_trainer(trainer, problems)
    return RunSpec(
        model=parse_model(container["model"], problems),
        init=InitSpec(typed.init.name, bool(typed.init.strict), parse_rules(list(container["init"]["rules"]), problems)),
        data=data,
        optim=parse_optim(container["optim"], freeze(typed.optim.scheduler, SchedulerSpec), problems),
        trainer=trainer,
        seed=typed.seed,
        config=container,
        tracker=parse_tracker(typed.tracker, problems),
        metrics=metrics,
        loss=parse_loss(typed.loss, data.task, problems),
    )


_VAR_REFERENCE = re.compile(r"\$\{[^{}]*?\bmodel\.vars\.([A-Za-z_]\w*)")


def _referenced_vars(cfg: DictConfig) -> set[str]:
    """Returns the names of the model variables some interpolation of the (unresolved) config reads."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str):
            found.update(_VAR_REFERENCE.findall(node))

    walk({k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k != "hydra"})  # type: ignore[union-attr]
    return found


def _check_vars(model: Any, referenced: set[str] | None, problems: Problems) -> None:
    """Checks model.vars and removes it: its values now live where they are used, so the saved
    config holds the numbers themselves (a resumed run's model is the saved one)."""
    if not isinstance(model, dict):
        return
    declared = model.pop("vars", None) or {}
    if not isinstance(declared, dict):
        problems.add("model.vars", f"expected a mapping of name -> value (n_embd: 64), got {declared!r}")
        return
    for name, value in declared.items():
        key = f"model.vars.{name}"
        if not str(name).isidentifier():
            problems.add(key, f"a variable name must be an identifier (letters, digits, '_'), got {name!r}")
        elif isinstance(value, (dict, list)):
            problems.add(key, f"expected a number, string or boolean, got {value!r}")
        elif referenced is not None and name not in referenced:
            problems.add(key, f"no key of the config reads it (use it as ${{model.vars.{name}}}); "
                              "a variable nothing reads would change nothing")


def _at(container: dict, dotted: str, default: Any) -> Any:
    node: Any = container
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def to_container(cfg: DictConfig | dict) -> dict:
    """Returns the resolved config as plain dicts and lists, or raises ConfigError naming the bad key."""
    if isinstance(cfg, dict):
        return copy.deepcopy(cfg)
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "config"
        raise ConfigError([_omegaconf_problem(key, error)]) from None


def with_schema(cfg: DictConfig | dict) -> DictConfig:
    """Returns the config merged onto the typed schema (a saved or hand-written config gets the same checks)."""
    try:
        return OmegaConf.merge(OmegaConf.structured(RunConfig), cfg)  # type: ignore[return-value]
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "config"
        raise ConfigError([_omegaconf_problem(key, error)]) from None


def _omegaconf_problem(key: str, error: Exception) -> Problem:
    message = str(error).splitlines()[0]
    if "Missing mandatory value" in message:
        message = "a value is required here (it is '???')"
    return Problem(key, message)


# ---------------------------------------------------------------- schema-level checks

OPTIONAL_SECTIONS = ("tracker",)  # null when not used


def _check_unknown_keys(container: dict, problems: Problems) -> dict:
    """Removes and reports every key the schema does not have (Hydra's `+key=` adds keys past struct
    mode); returns the optimizer's extra keys, which are constructor arguments checked later."""
    extras: dict = {}
    for name, schema in SECTIONS.items():
        node = _at(container, name, None) if name else container
        if not isinstance(node, dict):
            continue
        known = field_names(schema)
        for key in [k for k in node if k not in known]:
            if schema is OptimConfig:
                extras[key] = node.pop(key)
                continue
            home = key_home(name, str(key))
            hint = f" it belongs at {home}" if home else suggest(str(key), known) or " it takes: " + ", ".join(known)
            problems.add(f"{name}.{key}" if name else str(key), f"unknown key;{hint}")
            del node[key]
    return extras


def _booleans() -> set[str]:
    """Returns the dotted paths of the schema's boolean fields (marked by config.flag)."""
    return {f"{section}.{f.name}" for section, schema in SECTIONS.items() if section
            for f in dataclasses.fields(schema) if f.metadata.get("flag")}


def _check_booleans(container: dict, problems: Problems) -> None:
    for path in sorted(_booleans()):
        section, _, key = path.rpartition(".")
        node = _at(container, section, None)
        if isinstance(node, dict) and key in node and not isinstance(node[key], bool):
            problems.add(path, f"expected true or false, got {node[key]!r}")
            node.pop(key)
