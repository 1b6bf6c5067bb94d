"""Bad config input beyond the one-row-one-message table of test_failures.py: problems reported together."""

from __future__ import annotations

import numpy as np
import pytest

import runner
from runner.errors import ConfigError
from runner.prepare.plan import validate


def test_every_problem_is_reported_at_once(compose):
    with pytest.raises(ConfigError) as caught:
        validate(compose("optim.lr=0", "trainer.batch_size=0", "model.layers.fc1.type=Lineer", "trainer.dtype=float8",
                         "+model.layers.fc2.out_feature=3"))
    keys = {p.key for p in caught.value.problems}
    assert {"optim.lr", "trainer.batch_size", "model.layers.fc1.type", "trainer.dtype", "model.layers.fc2.out_feature"} <= keys
    assert str(caught.value).startswith(f"config errors ({len(caught.value.problems)}):")


def test_problems_are_found_before_any_data_or_weights(compose, monkeypatch):
    import runner.prepare.prepare

    monkeypatch.setattr(runner.prepare.prepare, "load_data", lambda cfg: pytest.fail("data loaded before validation finished"))
    with pytest.raises(ConfigError):
        runner.build(compose("optim.lr=-1"))


def test_file_data_trains(compose, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    y = (x[:, 0] > 0).astype(np.int64)
    path = tmp_path / "d.npz"
    np.savez(path, features=x, targets=y)
    cfg = compose("data=file", f"data.path={path}", "data.num_features=4", "data.num_outputs=2", "trainer.epochs=30")
    summary = runner.train(cfg, tmp_path / "run")
    assert summary["val_accuracy"] >= 0.9


@pytest.mark.parametrize("suffix", [".csv", ".pt"])
def test_csv_and_pt_data_files_load(compose, tmp_path, suffix):
    import torch

    x = np.random.default_rng(0).normal(size=(50, 3))
    y = (x[:, 0] > 0).astype(np.int64)
    path = tmp_path / f"d{suffix}"
    if suffix == ".csv":
        np.savetxt(path, np.column_stack([x, y]), delimiter=",", header="a,b,c,y", comments="")
    else:
        torch.save({"features": torch.from_numpy(x), "targets": torch.from_numpy(y)}, path)
    summary = runner.train(compose("data=file", f"data.path={path}", "data.num_features=3", "data.num_outputs=2", "trainer.max_steps=2"), tmp_path / "run")
    assert summary["steps"] == 2


@pytest.mark.parametrize("section", ["model", "init", "data", "optim", "trainer"])
def test_a_config_without_a_section_is_a_config_error_or_takes_the_schema_s_default(compose, section):
    # Found by the fuzz test: a missing trainer section raised KeyError.
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(compose(), resolve=True)
    del config[section]
    if section == "trainer":  # every trainer key has a default
        assert validate(config).spec.trainer.epochs == 20
    else:
        with pytest.raises(ConfigError, match=f"{section}: .*missing mandatory value: {section}"):
            validate(config)
