"""Every shipped YAML composes and builds; the schema rejects typos at compose time."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import runner
from conftest import config_names, model_choice, needs, token_files
from runner.config.schema import DataConfig, SchedulerConfig, TrackerConfig, TrainerConfig, conf_dir
from runner.errors import ConfigError
from runner.prepare.plan import validate
from runner.spec.types import DataSpec, SchedulerSpec, TrackerSpec, TrainerSpec


def test_conf_dir_is_found_and_holds_every_group():
    groups = {p.name for p in conf_dir().iterdir() if p.is_dir()}
    assert {"model", "init", "data", "optim"} <= groups


@pytest.mark.parametrize("model", config_names("model"))
def test_every_model_config_composes_and_builds(compose, model):
    layers = ["+model.layers={fc: {type: Linear, in_features: 64, out_features: 10}}"] if model == "custom" else []
    cfg = compose(model_choice(model), *layers)
    built = runner.build(cfg)
    assert sum(p.numel() for p in built.parameters()) > 0


@pytest.mark.parametrize("init", config_names("init"))
def test_every_init_config_composes_and_builds(compose, init):
    runner.build(compose(f"init={init}"))


@pytest.mark.parametrize("optim", config_names("optim"))
def test_every_optim_config_trains_a_few_steps(compose, optim, tmp_path):
    assert runner.train(compose(f"optim={optim}", "trainer.max_steps=3"), tmp_path)["steps"] == 3


@pytest.mark.parametrize("data", [d for d in config_names("data") if d != "file"])
def test_every_data_config_validates(compose, data, image_datasets, tmp_path):
    model = {"text": ["model=transformer_lm"], "digits_reconstruction": ["model=autoencoder"]}.get(data, [])
    source = "mnist" if data == "fashion_mnist" else data
    if source in image_datasets:  # a directory in the dataset's own format, and a model that takes images
        size = ["model.vars.size=28"] if source == "mnist" else ["model.vars.channels=3", "model.vars.size=32"]
        classes = ["data.num_outputs=3"] if source == "image_folder" else []
        model = [f"data.root={image_datasets[source][0]}", "model=cnn", *size, *classes]
    if data == "parquet":  # a table written with pyarrow's own writer
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"x": [0.5, 1.5, 2.5, 3.5], "label": [0, 1, 0, 1]}), tmp_path / "t.parquet")
        model = [f"data.path={tmp_path / 't.parquet'}", "data.features=[x]", "data.target=label", "data.num_features=1", "data.num_outputs=2"]
    if data == "tokens":
        model = [f"data.root={token_files(tmp_path / 'tokens')}", "data.vocab_size=65", "data.block_size=32", "model=nanogpt"]
    validate(compose(f"data={data}", *model))


@pytest.mark.parametrize("experiment", config_names("experiment"))
def test_every_experiment_preset_trains_a_step(compose, experiment, tmp_path, mlp_weights):
    assert runner.train(compose(f"experiment={experiment}", "trainer.max_steps=1", *needs(experiment, mlp_weights)), tmp_path)["steps"] == 1


def test_a_misspelt_key_fails_at_compose_time_naming_it(compose):
    with pytest.raises(ConfigError) as caught:
        compose("trainer.epoch=3", "optim.lrr=0.1")
    (problem,) = caught.value.problems  # Hydra stops at the first
    assert problem.key == "trainer.epoch" and "did you mean 'epochs'" in problem.message
    assert "+trainer.epoch" not in problem.message  # Hydra's advice would only add the typo


def test_defaults_are_the_documented_experiment(compose):
    cfg = compose()
    assert (cfg.model.name, cfg.init.name, cfg.data.name, cfg.optim.name) == ("mlp", "default", "digits", "adam")
    assert cfg.trainer.device == "auto" and cfg.trainer.dtype == "float32"


def test_build_returns_a_cpu_model_here(compose):
    model = runner.build(compose())
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def _defaults(cls: type) -> list[tuple[str, object]]:
    """A dataclass's fields in order, each with its default (a list default as a tuple: the spec's frozen form)."""
    found = []
    for f in dataclasses.fields(cls):
        value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(value):
            value = tuple(_defaults(type(value)))  # a nested group (data.transforms) compares field by field
        found.append((f.name, tuple(value) if isinstance(value, list) else value))
    return found


@pytest.mark.parametrize(("schema", "spec"), [(DataConfig, DataSpec), (SchedulerConfig, SchedulerSpec), (TrainerConfig, TrainerSpec),
                                              (TrackerConfig, TrackerSpec)])
def test_a_groups_spec_type_mirrors_its_schema(schema, spec):
    """The spec types written out for the schema's groups have its fields: the same names, order and defaults."""
    assert spec.__dataclass_params__.frozen
    assert _defaults(spec) == _defaults(schema)


@pytest.mark.slow
def test_an_installed_wheel_finds_its_configs(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(tmp_path / "dist")], check=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("runner-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)], check=True, timeout=300)
    probe = "import runner, runner.config.schema as c; print(c.conf_dir()); print(runner.compose(['model=cnn']).model.name)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site"), "PATH": ""},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(tmp_path / "site" / "runner" / "conf"), "cnn"]
