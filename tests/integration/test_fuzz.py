"""Hypothesis mutates valid configs: each case trains a couple of steps or fails with a clear error.

Never an internal exception, and never a silently ignored key. A short run by default;
`pytest -m long` runs many more examples.
"""

from __future__ import annotations

import copy
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

import runner
from conftest import QUIET
from runner.errors import ConfigError, RunError

# A config with something in every list, so mutations reach values inside them: init rules with
# arguments, named optimizer groups, a transposed tie and a frozen glob.
BASE = OmegaConf.to_container(runner.compose([
    *QUIET, "trainer.max_steps=2", "experiment=autoencoder", "model.frozen=[act.*]",
    "init.rules=[{match: '*.weight', fn: xavier_uniform_, gain: 1.0}, {match: '*.bias', fn: normal_, std: 0.01}]",
    "optim.param_groups=[{name: enc, match: 'enc.*', lr: 0.01, betas: [0.8, 0.9]}, {name: rest}]",
]), resolve=False)
BASE["model"]["frozen"] = []  # (the glob above only proves the list composes; Tanh has no tensor to freeze)
SECTIONS = ["trainer", "optim", "data", "init", "model", "optim.scheduler", "init.rules.0", "init.rules.1",
            "optim.param_groups.0", "optim.param_groups.1", "model.ties.0"]
FIXED = {"trainer.max_steps"}  # keeps every case to two steps


def paths(node, prefix=""):
    """Yields the dotted path (list items by index) of every leaf and container of the config."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        path = f"{prefix}.{key}" if prefix else str(key)
        if path not in FIXED:
            yield path
            yield from paths(value, path)


def child(node, key: str):
    if isinstance(node, dict):
        return node.get(key)
    if isinstance(node, list) and key.isdigit() and int(key) < len(node):
        return node[int(key)]
    return None


PATHS = sorted(set(paths(BASE)))
VALUES = st.one_of(
    st.integers(-3, 70), st.floats(-10, 10), st.just(float("nan")), st.text(max_size=6), st.none(), st.booleans(),
    st.sampled_from(["cpu", "auto", "Linear", "ReLU", "xavier_uniform_", "adam", "*.weight", "???", "${seed}"]),
    st.lists(st.integers(-2, 9), max_size=3),
    st.fixed_dictionaries({}, optional={"type": st.sampled_from(["Linear", "ReLU", "Nope"]), "fn": st.just("ones_"), "in_features": st.integers(-1, 70)}),
)
MUTATION = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(PATHS), VALUES),
    st.tuples(st.just("delete"), st.sampled_from(PATHS), st.none()),
    st.tuples(st.just("add"), st.sampled_from(SECTIONS), st.text("abcdefghij_", min_size=3, max_size=8)),
)


def mutate(config: dict, mutation) -> bool:
    """Applies one mutation; returns True when it added a key no schema knows."""
    action, path, value = mutation
    *parents, leaf = path.split(".")
    node = config
    for key in parents:
        node = child(node, key)
        if node is None:
            return False
    if isinstance(node, list) and leaf.isdigit() and int(leaf) < len(node):
        if action == "set":
            node[int(leaf)] = value
        elif action == "delete":
            del node[int(leaf)]
        return False
    if not isinstance(node, dict):
        return False
    if action == "set":
        node[leaf] = value
    elif action == "delete":
        node.pop(leaf, None)
    else:
        section = child(node, leaf)
        if not isinstance(section, dict) or value in section:
            return False
        section[value] = 1
        return leaf != "layers"
    return False


def check(mutations) -> None:
    config = copy.deepcopy(BASE)
    added = [mutate(config, m) for m in mutations]
    with tempfile.TemporaryDirectory() as run_dir:
        try:
            runner.train(OmegaConf.create(config), run_dir)
        except (ConfigError, RunError) as error:
            assert str(error).strip() and "Traceback" not in str(error)
            return
    assert not any(added), f"an unknown key was silently accepted: {mutations}"


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.lists(MUTATION, min_size=1, max_size=3))
def test_mutated_configs_train_or_fail_clearly(mutations):
    check(mutations)


@pytest.mark.long
@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_configs_train_or_fail_clearly_long(mutations):
    check(mutations)
