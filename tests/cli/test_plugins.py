"""Plugins: layer types and init functions registered from code (register_layer, register_init) or
by installed distributions (entry-point groups `runner.layers`, `runner.inits`); a saved run naming
a type that is not registered is refused by name, and nothing it says is ever imported."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import runner
from conftest import PLUGIN, QUIET, env_with, install, run_cli
from runner.registry import init_functions
from runner.registry import tables as registry
from runner.registry.tables import layer_types
from runner.run import checkpoint
from runner.run.directory import read_metrics

LAYERS = "+model.layers={scale: {type: PlugScale, num_features: 64}, fc: {type: Linear, in_features: 64, out_features: 10}}"
CONSTANT_RULE = "init.rules=[{match: scale.weight, fn: plug_constant_, value: 0.375}]"
ENTRY_POINTS = """\
[runner.layers]
PlugScale = runner_test_plugin:PlugScale

[runner.inits]
plug_constant_ = runner_test_plugin:plug_constant_

[runner.callbacks]
plug_evals = runner_test_plugin:PlugEvals
"""
LOAD = """\
import sys, runner
try:
    model = runner.load(sys.argv[1])
except runner.ConfigError as error:
    print(f"runner: {error}", file=sys.stderr)
    sys.exit(2)
print(type(model.scale).__module__, model.scale.weight.unique().tolist())
"""


@contextmanager
def registry_restored():
    """Leaves the layer and init registries as they were (other tests share this process), and starts
    from an empty layer_types cache (an earlier test in this process may have filled it)."""
    layers, inits, callbacks = dict(registry._REGISTERED), dict(init_functions._REGISTERED), dict(registry._CALLBACKS)
    layer_types.cache_clear()
    try:
        yield
    finally:
        registry._CALLBACKS.clear()
        registry._CALLBACKS.update(callbacks)
        registry._REGISTERED.clear()
        registry._REGISTERED.update(layers)
        init_functions._REGISTERED.clear()
        init_functions._REGISTERED.update(inits)
        layer_types.cache_clear()


def import_plugin():
    """Imports the fixture plugin from its file, leaving sys.path and sys.modules alone."""
    spec = importlib.util.spec_from_file_location("runner_test_plugin", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_in_subprocess(run_dir: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LOAD, str(run_dir)], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------- register_layer in-process


@pytest.fixture(scope="module")
def registered_run(tmp_path_factory):
    """A run trained in this process with PlugScale registered from code: (run dir, plugin module)."""
    plugin = import_plugin()
    run_dir = tmp_path_factory.mktemp("registered")
    with registry_restored():
        runner.register_layer("PlugScale", plugin.PlugScale)
        runner.train(runner.compose([*QUIET, "model=custom", LAYERS, "trainer.epochs=1"]), run_dir)
        yield run_dir, plugin


@pytest.mark.xdist_group("registered_run")  # the module fixture is built on one worker
def test_registered_layer_trains_and_computes_what_pytorch_computes(registered_run):
    run_dir, plugin = registered_run
    model = runner.load(run_dir)
    assert type(model.scale) is plugin.PlugScale
    assert not torch.equal(model.scale.weight, torch.ones(64))  # trained: the optimizer reached it
    plain = nn.Sequential(OrderedDict(scale=plugin.PlugScale(64), fc=nn.Linear(64, 10)))
    plain.load_state_dict(model.state_dict())
    x = torch.randn(5, 64)
    assert torch.equal(model(x), plain(x))
    assert torch.allclose(model(x), (x * model.scale.weight + model.scale.bias) @ model.fc.weight.T + model.fc.bias)


@pytest.mark.xdist_group("registered_run")  # the module fixture is built on one worker
@pytest.mark.parametrize("how", ["load", "resume"])
def test_saved_run_naming_an_unregistered_type_is_refused_without_importing(registered_run, tmp_path, how):
    # The plugin's module is importable in the subprocess, but no distribution registers it.
    run_dir, _ = registered_run
    marker = tmp_path / "imported"
    env = env_with(PLUGIN.parent, marker)
    if how == "load":
        result = load_in_subprocess(run_dir, env)
    else:
        result = run_cli(f"resume={run_dir}", "trainer.epochs=2", cwd=tmp_path, env=env, process=True)  # entry points: a fresh process
    assert result.returncode == 2, result.stderr
    assert "unknown layer type 'PlugScale'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()


def test_register_layer_is_seen_by_a_later_parse(compose):
    class Doubler(nn.Module):
        def forward(self, x):
            return 2 * x

    layers = "+model.layers={twice: {type: Doubler}, fc: {type: Linear, in_features: 64, out_features: 10}}"
    with registry_restored():
        with pytest.raises(runner.ConfigError, match="unknown layer type 'Doubler'"):
            runner.build(compose("model=custom", layers))  # the cached table has no Doubler yet
        runner.register_layer("Doubler", Doubler)
        runner.register_layer("Doubler", Doubler)  # the same class again: a no-op
        model = runner.build(compose("model=custom", layers))
        assert isinstance(model.twice, Doubler)
    assert "Doubler" not in layer_types()


class Other(nn.Module):
    pass


@pytest.mark.parametrize("name, cls, message", [
    ("not-an-identifier", Other, "'not-an-identifier' must be a Python identifier"),
    (3, Other, "3 must be a Python identifier"),
    ("Other", object, "'Other' must be a subclass of torch.nn.Module"),
    ("Other", Other(), "'Other' must be a subclass of torch.nn.Module"),
    ("Linear", Other, "'Linear' already means torch.nn.modules.linear.Linear; it cannot also mean test_plugins.Other"),
    ("Residual", Other, "'Residual' already means runner.registry.layers.Residual; it cannot also mean test_plugins.Other"),
    ("ModuleList", Other, "'ModuleList' is torch.nn.ModuleList, which is not a layer a config may use"),
])
def test_register_layer_refuses(name, cls, message):
    with registry_restored(), pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        runner.register_layer(name, cls)


def test_register_layer_refuses_a_second_class_for_a_registered_name():
    class First(nn.Module):
        pass

    with registry_restored():
        runner.register_layer("Mine", First)
        with pytest.raises(ValueError, match=r"'Mine' already means test_plugins\..*First; it cannot also mean test_plugins\.Other"):
            runner.register_layer("Mine", Other)
        assert layer_types()["Mine"] is First


@pytest.mark.parametrize("name, fn, message", [
    ("bad name", torch.nn.init.zeros_, "must be a Python identifier"),
    ("seven", 7, "'seven' must be callable"),
    ("normal_", torch.nn.init.zeros_, "torch.nn.init function and cannot be replaced"),
    ("fill", torch.nn.init.zeros_, "modifier rule"),
    ("piecewise", torch.nn.init.zeros_, "'piecewise' already means runner.registry.init_functions.piecewise_"),
])
def test_register_init_refuses(name, fn, message):
    with registry_restored(), pytest.raises(ValueError, match=message):
        runner.register_init(name, fn)


# ---------------------------------------------------------------- entry points


@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory):
    """A CLI run with the plugin installed as a distribution: (run dir, site dir, completed process, marker)."""
    root = tmp_path_factory.mktemp("plugin")
    install(root / "site", "runner-test-plugin", ENTRY_POINTS)
    marker = root / "imported"
    result = run_cli(
        *QUIET, "model=custom", LAYERS, "model.frozen=[scale.weight]", CONSTANT_RULE, "trainer.epochs=2",
        "trainer.callbacks=[{name: plug_evals, tag: seen}]",
        f"hydra.run.dir={root / 'run'}", cwd=root, env=env_with(root / "site", marker), process=True,
    )
    return root / "run", root / "site", result, marker


@pytest.mark.xdist_group("plugin_run")  # the module fixture is built on one worker
def test_entry_point_layer_and_init_work_from_the_cli(plugin_run):
    run_dir, _, result, marker = plugin_run
    assert result.returncode == 0, result.stderr
    assert marker.exists()  # the import marker works, so its absence elsewhere means something
    weights = load_file(checkpoint.latest_checkpoint(run_dir) / "model.safetensors")
    assert torch.equal(weights["scale.weight"], torch.full((64,), 0.375))  # the plugin's init; frozen since
    assert not torch.equal(weights["scale.bias"], torch.zeros(64))  # trained
    evals = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "eval"]
    assert [r["plug_seen"] for r in evals] == [1, 2]  # the entry point's callback, with its argument
    assert int(load_file(checkpoint.latest_checkpoint(run_dir) / "optimizer.safetensors")["plugevals.count"]) == 2


@pytest.mark.xdist_group("plugin_run")  # the module fixture is built on one worker
def test_runner_load_sees_entry_point_plugins(plugin_run, tmp_path):
    run_dir, site, _, _ = plugin_run
    result = load_in_subprocess(run_dir, env_with(site, tmp_path / "imported"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["runner_test_plugin", "[0.375]"]


BROKEN = """\
[runner.layers]
Missing = runner_missing_module:Thing
NotALayer = runner_test_plugin:plug_constant_

[runner.inits]
not_callable = runner_test_plugin:NOT_CALLABLE
"""


def test_broken_entry_points_are_a_config_error_naming_each(tmp_path):
    install(tmp_path / "site", "broken-plugin", BROKEN)
    result = run_cli(*QUIET, "trainer.max_steps=1", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
                     env=env_with(tmp_path / "site", tmp_path / "imported"), process=True)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == "runner: config errors (3):"
    assert lines[1] == (
        "  entry point runner.layers:Missing (runner_missing_module:Thing, from distribution broken-plugin 0.1): "
        "cannot be imported: ModuleNotFoundError: No module named 'runner_missing_module'; fix or uninstall the plugin"
    )
    assert "entry point runner.layers:NotALayer (runner_test_plugin:plug_constant_, from distribution broken-plugin 0.1): layer type 'NotALayer' must be a subclass of torch.nn.Module" in lines[2]
    assert "entry point runner.inits:not_callable (runner_test_plugin:NOT_CALLABLE, from distribution broken-plugin 0.1): init function 'not_callable' must be callable" in lines[3]


def test_broken_entry_point_is_reported_on_every_use(monkeypatch):
    # In-process, without a distribution: an entry point claiming a torch.nn name for another class.
    monkeypatch.syspath_prepend(str(PLUGIN.parent))
    found = [importlib.metadata.EntryPoint("Linear", "runner_test_plugin:PlugScale", "runner.layers")]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: found if group == "runner.layers" else [])
    monkeypatch.setattr(registry, "_loaded", set())
    with registry_restored():
        for _ in range(2):  # not cached as loaded: the next parse reports it again
            with pytest.raises(runner.ConfigError, match=r"entry point runner.layers:Linear \(runner_test_plugin:PlugScale, from an unknown distribution\): layer type 'Linear' already means torch.nn.modules.linear.Linear"):
                layer_types()
            with pytest.raises(runner.ConfigError, match="runner.layers:Linear"):
                init_functions.init_functions()


def test_a_registered_init_functions_entry_states_its_std_and_dims_as_a_built_in_does(compose):
    """register_init takes an InitFunction: its predicted std reaches the tensor table, and its dims are
    checked before any tensor is drawn, exactly as for torch's own functions."""
    from runner.prepare.plan import validate
    from runner.prepare.prepare import prepare
    from runner.prepare.tensor_table import tensor_rows
    from runner.registry.init_functions import InitFunction

    def scaled_normal_(tensor, scale=1.0, generator=None):
        return tensor.normal_(0.0, scale / tensor.shape[1] ** 0.5, generator=generator)

    entry = InitFunction(scaled_normal_, dims=(2, 2), std=lambda args, t: args.get("scale", 1.0) / t.shape[1] ** 0.5)
    with registry_restored():
        runner.register_init("scaled_normal", entry)
        rule = "init.rules=[{match: fc1.weight, fn: scaled_normal, scale: 2.0}]"
        rows = {r["name"]: r for r in tensor_rows(prepare(validate(compose(rule))))}
        assert rows["fc1.weight"]["predicted_std"] == pytest.approx(2.0 / 64 ** 0.5)  # digits: 64 inputs
        assert rows["fc1.weight"]["std"] == pytest.approx(2.0 / 64 ** 0.5, rel=0.1)
        with pytest.raises(runner.ConfigError, match=r"init.rules\[0\]: scaled_normal needs a tensor with exactly 2 dims"):
            validate(compose("init.rules=[{match: '*', fn: scaled_normal}]"))


def test_trainer_callbacks_are_checked_against_the_registry_and_the_constructor(compose):
    from runner.prepare.plan import validate

    plugin = import_plugin()
    with registry_restored():
        with pytest.raises(runner.ConfigError, match=r"trainer.callbacks\[0\]: unknown callback 'plug_evals'; none is registered"):
            validate(compose("trainer.callbacks=[plug_evals]"))
        runner.register_callback("plug_evals", plugin.PlugEvals)
        with pytest.raises(runner.ConfigError, match=r"trainer.callbacks\[0\].name: unknown callback 'plug_eval'; did you mean 'plug_evals'"):
            validate(compose("trainer.callbacks=[{name: plug_eval}]"))
        with pytest.raises(runner.ConfigError, match=r"trainer.callbacks\[0\]: plug_evals: got an unexpected keyword argument 'tags'"):
            validate(compose("trainer.callbacks=[{name: plug_evals, tags: x}]"))
        with pytest.raises(ValueError, match="must be a subclass of runner.Callback"):
            runner.register_callback("not_one", dict)
