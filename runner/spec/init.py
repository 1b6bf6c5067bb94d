"""init.rules: each rule's function (an init function or a modifier) with its arguments, and what it selects."""

from __future__ import annotations

import re
from typing import Any

from runner.errors import Problems, suggest
from runner.registry.init_functions import NONLINEARITIES, argument_problems, init_functions
from runner.registry.modifiers import MODIFIERS, modifier_problems
from runner.registry.tables import layer_types
from runner.spec.common import mappings
from runner.spec.types import Rule

_RULE_SELECTORS = ("match", "regex", "module", "type", "kind", "fn", "optional")
KINDS = ("weight", "bias", "buffer", "any")


def parse_rules(declared: list[Any], problems: Problems) -> tuple[Rule, ...]:
    """Returns the rules declared under init.rules, each checked for a known function and valid arguments."""
    functions = [*init_functions(), *MODIFIERS]
    rules = []
    for index, key, body in mappings(declared, "init.rules", "{match: '*.weight', fn: xavier_uniform_}", problems):
        fn = body.get("fn")
        if not isinstance(fn, str):
            problems.add(f"{key}.fn", f"missing: name an init function ({', '.join(sorted(functions))})")
            continue
        if fn not in functions:
            problems.add(f"{key}.fn", f"unknown init function {fn!r};{suggest(fn, functions) or ' available: ' + ', '.join(sorted(functions))}")
            continue
        args = {k: v for k, v in body.items() if k not in _RULE_SELECTORS}
        if fn in MODIFIERS:
            bad = modifier_problems(fn, args)
            if isinstance(args.get("index"), list):
                args["index"] = tuple(args["index"])
        else:
            args = _resolve_gain(args, f"{key}.gain", problems)
            if init_functions()[fn].reads_file and isinstance(args.get("rename"), list):
                # A YAML `[fc1, 0]` reads the 0 as a number: a prefix is text either way.
                args["rename"] = tuple(str(p) if isinstance(p, int) and not isinstance(p, bool) else p for p in args["rename"])
            bad = argument_problems(fn, args)
        for arg, message in bad:
            problems.add(f"{key}.{arg}", message)
        rule = _selector(index, fn, args, body, key, problems)
        if rule is not None and not bad:
            rules.append(rule)
    return tuple(rules)


def _resolve_gain(args: dict, key: str, problems: Problems) -> dict:
    # `gain: relu` or `gain: {nonlinearity: leaky_relu, param: 0.2}` -> a number via calculate_gain.
    gain = args.get("gain")
    if isinstance(gain, (int, float)) or gain is None or gain == "auto":
        return args
    name, param = (gain.get("nonlinearity"), gain.get("param")) if isinstance(gain, dict) else (gain, None)
    from torch.nn.init import calculate_gain  # a formula: no tensor is made

    try:
        return {**args, "gain": calculate_gain(name, param)}
    except (ValueError, TypeError) as error:
        problems.add(key, f"{error};{suggest(str(name), NONLINEARITIES) or ' known: ' + ', '.join(NONLINEARITIES)}")
        return {k: v for k, v in args.items() if k != "gain"}


def _selector(index: int, fn: str, args: dict, body: dict, key: str, problems: Problems) -> Rule | None:
    match = body.get("match", "*")
    patterns = tuple(str(m) for m in match) if isinstance(match, list) else (str(match),)
    regex = None
    if body.get("regex") is not None:
        try:
            regex = re.compile(str(body["regex"]))
        except re.error as error:
            problems.add(f"{key}.regex", f"invalid regular expression {body['regex']!r}: {error}")
            return None
    known = layer_types()
    selected = {}
    for selector in ("module", "type"):
        names = body.get(selector) or ()
        selected[selector] = (names,) if isinstance(names, str) else tuple(names)
        for module in selected[selector]:
            if module not in known and (selector == "type" or module not in ("_NormBase", "_ConvNd", "Module")):
                problems.add(f"{key}.{selector}", f"unknown layer type {module!r};{suggest(str(module), known)}".rstrip(";"))
    kind = body.get("kind")
    if kind is not None and kind not in KINDS:
        problems.add(f"{key}.kind", f"expected one of {', '.join(KINDS)}, got {kind!r}")
        return None
    optional = body.get("optional", False)
    if not isinstance(optional, bool):
        problems.add(f"{key}.optional", f"expected true or false, got {optional!r}")
    return Rule(index, fn, tuple(args.items()), patterns, regex, selected["module"], kind, optional is True, selected["type"])
