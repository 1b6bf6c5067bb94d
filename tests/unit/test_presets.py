"""Presets hold: every value a shipped option file sets is the value the composed config has."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
from omegaconf import OmegaConf

import runner
from runner.config.schema import conf_dir

GROUPS = ("data", "model", "init", "optim", "experiment")


def option_files() -> list[tuple[str, str]]:
    return [(group, path.stem) for group in GROUPS for path in sorted((conf_dir() / group).glob("*.yaml"))]


def leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Yields (dotted path, value) for every scalar and list the YAML sets."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


def file_values(group: str, option: str) -> tuple[dict[str, Any], list[str]]:
    """Returns what the file sets (paths from the config root, unresolved) and its `override` entries."""
    path = conf_dir() / group / f"{option}.yaml"
    text = path.read_text(encoding="utf-8")
    body = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    overrides = [item for item in body.pop("defaults", []) if isinstance(item, dict)]
    package = "" if "# @package _global_" in text else group
    values = dict(leaves(body, package))
    return values, [f"{k.split()[-1].lstrip('/')}={v}" for item in overrides for k, v in item.items()]


def composed_value(cfg: dict, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        assert isinstance(node, dict) and part in node, f"{dotted} is missing from the composed config"
        node = node[part]
    return node


@pytest.mark.parametrize("group,option", option_files())
def test_every_value_an_option_file_sets_is_composed(group: str, option: str) -> None:
    values, selected = file_values(group, option)
    extra = ["data.path=x.npz", "data.num_features=3", "data.num_outputs=2"] if (group, option) == ("data", "file") else []
    composed = OmegaConf.to_container(runner.compose([f"{group}={option}", *extra]), resolve=False)
    expected = dict(values)
    # A preset's `override /group: option` entries select files whose values hold unless the preset sets them.
    for choice in selected:
        sub_group, sub_option = choice.split("=")
        for key, value in file_values(sub_group, sub_option)[0].items():
            expected.setdefault(key, value)
    for key, value in expected.items():
        if value == "???":
            continue
        assert composed_value(composed, key) == value, f"conf/{group}/{option}.yaml sets {key}={value!r}"


def test_model_files_declare_the_model_only() -> None:
    for path in sorted((conf_dir() / "model").glob("*.yaml")):
        assert "@package _global_" not in path.read_text(encoding="utf-8"), path.name


def test_a_preset_yields_to_the_command_line(tmp_path: Path) -> None:
    cfg = runner.compose(["experiment=transformer_lm", "trainer.epochs=2", "data=file", f"data.path={tmp_path / 'x.npz'}",
                          "data.num_features=8", "data.num_outputs=5"])
    assert (cfg.trainer.epochs, cfg.optim.lr, cfg.data.name, cfg.model.name) == (2, 0.003, "file", "transformer_lm")
