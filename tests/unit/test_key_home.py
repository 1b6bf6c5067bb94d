"""A key set in the wrong section (one too high, or another one) is named with where it belongs (runner.config.schema.key_home)."""

from __future__ import annotations

import pytest

import runner
from runner.config.schema import key_home


def test_a_key_of_a_section_inside_is_found_there_and_an_ambiguous_one_is_not():
    assert key_home("data", "num_workers") == "data.loader.num_workers"
    assert key_home("", "epochs") == "trainer.epochs"
    assert key_home("", "name") is None  # model, data, optim, loss... all have one
    assert key_home("trainer", "frobnicate") is None
    assert key_home("data.loader", "num_workers") is None  # a section's own key is not "inside" it, nor elsewhere


def test_a_key_of_another_section_is_found_there():
    assert key_home("data", "ckpt_every_epochs") == "trainer.ckpt_every_epochs"
    assert key_home("trainer", "num_workers") == "data.loader.num_workers"
    assert key_home("data", "seed") == "seed"
    assert key_home("trainer", "root") == "data.root"
    assert key_home("trainer", "name") is None  # several sections have a name


@pytest.mark.parametrize("override, home", [("data.ckpt_every_epochs=2", "trainer.ckpt_every_epochs"),
                                            ("+trainer.num_workers=2", "data.loader.num_workers")])
def test_a_setting_in_another_section_is_refused_naming_where_it_belongs(override, home):
    key = override.split("=")[0].lstrip("+")
    with pytest.raises(runner.ConfigError, match=f"{key}: unknown key; it belongs at {home}"):
        runner.build(runner.compose([override]))


@pytest.mark.parametrize("override", ["+data.num_workers=2", "data.num_workers=2"])
def test_a_loader_setting_under_data_is_refused_naming_where_it_belongs(override):
    with pytest.raises(runner.ConfigError, match=r"data.num_workers: unknown key; it belongs at data.loader.num_workers"):
        runner.build(runner.compose([override]))  # refused while composing (no +) or while checking (+)
