"""optim: the optimizer, its constructor arguments and their value domains, parameter groups, the scheduler."""

from __future__ import annotations

import inspect
from typing import Any

from runner.config.schema import OptimConfig
from runner.errors import Problems, suggest
from runner.registry.tables import SCHEDULERS, optimizer_arguments, optimizers
from runner.spec.common import check_choice, field_names, mappings
from runner.spec.types import GroupSpec, OptimSpec, SchedulerSpec


def parse_optim(optim: dict, scheduler: SchedulerSpec, problems: Problems) -> OptimSpec:
    name = optim.get("name")
    known = optimizers()
    if name not in known:
        problems.add("optim.name", f"unknown optimizer {name!r};{suggest(str(name), known) or ' available: ' + ', '.join(sorted(known))}")
        name = None
    structural = {"name", "param_groups", "no_decay_bias_and_norm", "scheduler", "clip_grad_norm"}
    args = {k: v for k, v in optim.items() if k not in structural and v is not None}
    # lr 0 is a default no tensor uses when every group sets its own (torch accepts it): checked below.
    zero_lr = args.get("lr") == 0 and not isinstance(args.get("lr"), bool)
    if zero_lr:
        del args["lr"]
    if name is not None:
        args = _check_optimizer_args(name, args, "optim", problems)
    groups = []
    declared = optim.get("param_groups") or []
    for index, key, group in mappings(declared, "optim.param_groups", "{name: head, match: 'head.*', lr: 0.01}", problems):
        group_name = group.get("name")
        if group_name is not None and not isinstance(group_name, str):
            problems.add(f"{key}.name", f"expected a string, got {group_name!r}")
        match = group.get("match")
        patterns = None if match is None else tuple(str(m) for m in match) if isinstance(match, list) else (str(match),)
        group_args = {k: v for k, v in group.items() if k not in ("name", "match")}
        if name is not None:
            group_args = _check_optimizer_args(name, group_args, key, problems, inherited=args)
        groups.append(GroupSpec(index, group_name, patterns, tuple(group_args.items())))
    _check_groups(groups, problems)
    if zero_lr:
        without = [f"optim.param_groups[{g.index}]" for g in groups if "lr" not in dict(g.args)]
        if groups and not without:
            args["lr"] = 0.0
        else:
            problems.add("optim.lr", "expected a number > 0; 0 is allowed only as a default that no tensor uses, when "
                                     f"every param group sets its own lr ({', '.join(without) + ' does not' if without else 'no param_groups are declared'})")
    clip = optim.get("clip_grad_norm")
    if clip is not None and clip <= 0:
        problems.add("optim.clip_grad_norm", f"expected a number > 0 (or null for no clipping), got {clip}")
    _check_scheduler(scheduler, problems)
    return OptimSpec(name or "?", tuple(args.items()), tuple(groups) or (GroupSpec(0, None, None, ()),),
                     optim.get("no_decay_bias_and_norm") is True, scheduler, clip)


def _check_groups(groups: list[GroupSpec], problems: Problems) -> None:
    rest = [g.index for g in groups if g.patterns is None]
    if len(rest) > 1:
        problems.add(f"optim.param_groups[{rest[1]}]", "only one group may leave out `match` (it takes the rest)")
    names: dict[str, int] = {}
    for group in groups:
        if group.name in names:
            problems.add(f"optim.param_groups[{group.index}].name", f"{group.name!r} already names optim.param_groups[{names[group.name]}]")
        if group.name is not None:
            names[group.name] = group.index


# Value domains of the common hyperparameters; every other argument is checked by the type of its default.
_OPTIM_DOMAINS = {
    "lr": (lambda v: v > 0, "a number > 0"),
    "eps": (lambda v: v > 0, "a number > 0"),
    "weight_decay": (lambda v: v >= 0, "a number >= 0"),
    "momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "dampening": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "alpha": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
}


def _check_optimizer_args(name: str, args: dict, key: str, problems: Problems, inherited: dict | None = None) -> dict:
    """Returns the arguments the optimizer takes (as its constructor wants them); adds a problem for the rest."""
    accepted = optimizer_arguments(name)
    checked = {}
    for arg, value in args.items():
        where = f"{key}.{arg}"
        if arg not in accepted:
            hint = suggest(arg, accepted) or " it takes: " + ", ".join(accepted)
            if key == "optim" and arg in field_names(OptimConfig):  # set by the optim option chosen, e.g. adam's betas
                hint += f" (leave it out with {where}=null)"
            problems.add(where, f"{name} takes no argument {arg!r};{hint}")
            continue
        message = _optimizer_value_problem(arg, value, accepted[arg])
        if message:
            problems.add(where, f"expected {message}, got {value!r}")
            continue
        checked[arg] = tuple(value) if isinstance(value, list) else value
    effective = {**(inherited or {}), **checked}
    if effective.get("nesterov") and (effective.get("momentum", 0) <= 0 or effective.get("dampening", 0) != 0):
        problems.add(f"{key}.nesterov", "Nesterov momentum needs momentum > 0 and dampening 0")
    return checked


def _optimizer_value_problem(arg: str, value: Any, parameter: inspect.Parameter) -> str | None:
    """Returns what `arg` expects when `value` is outside it: the common hyperparameters' domains,
    else what the signature says (a bool, an optional bool, a tuple of numbers, a number)."""
    default = parameter.default
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if arg in _OPTIM_DOMAINS:
        test, expected = _OPTIM_DOMAINS[arg]
        return None if number and test(value) else expected
    if isinstance(default, bool) or "bool" in str(parameter.annotation):
        return None if isinstance(value, bool) or (default is None and value is None) else "true or false"
    if isinstance(default, tuple):
        ok = isinstance(value, (list, tuple)) and len(value) == len(default) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        if ok and arg == "betas" and not all(0 <= v < 1 for v in value):
            ok = False
        return None if ok else f"{len(default)} numbers" + (" in [0, 1)" if arg == "betas" else "")
    if isinstance(default, (int, float)):
        return None if number else "a number"
    return None


def _check_scheduler(cfg: SchedulerSpec, problems: Problems) -> None:
    check_choice(cfg.name, SCHEDULERS, "optim.scheduler.name", problems)
    if cfg.step_size < 1:
        problems.add("optim.scheduler.step_size", f"expected an integer >= 1, got {cfg.step_size}")
    if not 0 < cfg.gamma <= 1:
        problems.add("optim.scheduler.gamma", f"expected 0 < gamma <= 1, got {cfg.gamma}")
    if cfg.warmup_steps < 0:
        problems.add("optim.scheduler.warmup_steps", f"expected an integer >= 0, got {cfg.warmup_steps}")
    if cfg.min_lr < 0:
        problems.add("optim.scheduler.min_lr", f"expected a number >= 0, got {cfg.min_lr}")
