"""A key set one section too high is named with where it belongs (runner.config.schema.nested_home)."""

from __future__ import annotations

import pytest

import runner
from runner.config.schema import nested_home


def test_a_key_of_a_section_inside_is_found_there_and_an_ambiguous_one_is_not():
    assert nested_home("data", "num_workers") == "data.loader.num_workers"
    assert nested_home("", "epochs") == "trainer.epochs"
    assert nested_home("", "name") is None  # model, data, optim, loss... all have one
    assert nested_home("trainer", "frobnicate") is None
    assert nested_home("data.loader", "num_workers") is None  # a section's own key is not "inside" it


@pytest.mark.parametrize("override", ["+data.num_workers=2", "data.num_workers=2"])
def test_a_loader_setting_under_data_is_refused_naming_where_it_belongs(override):
    with pytest.raises(runner.ConfigError, match=r"data.num_workers: unknown key; it belongs at data.loader.num_workers"):
        runner.build(runner.compose([override]))  # refused while composing (no +) or while checking (+)
