"""The CLI: a run directory on success; exit 2 and one clear message on a bad config."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import runner
from conftest import run_cli, run_module


def test_cli_trains_into_the_given_run_directory(tmp_path):
    result = run_cli("trainer.epochs=1", "trainer.progress=log", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 23
    assert (tmp_path / ".hydra" / "config.yaml").is_file()
    assert "epoch 0 step 23/23" in result.stdout + result.stderr


def test_cli_config_error_exits_2_without_traceback(tmp_path):
    result = run_cli("model.layers.fc1.type=Linaer", "optim.lr=-1", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "model.layers.fc1.type: unknown layer type 'Linaer'; did you mean 'Linear'?" in result.stderr
    assert "optim.lr: expected a number > 0, got -1" in result.stderr
    assert not (tmp_path / "summary.json").exists()


def test_cli_rerun_command_reproduces_the_weights(tmp_path):
    first = run_cli("trainer.max_steps=5", f"hydra.run.dir={tmp_path / 'a'}")
    assert first.returncode == 0, first.stderr
    command = json.loads((tmp_path / "a" / "environment.json").read_text())["command"].split()[3:]
    again = run_cli(*command, f"hydra.run.dir={tmp_path / 'b'}")
    assert again.returncode == 0, again.stderr
    sha = lambda d: json.loads((tmp_path / d / "summary.json").read_text())["weights_sha256"]
    assert sha("a") == sha("b")


def test_a_mistyped_override_is_answered_before_torch_is_imported(tmp_path):
    # `runner` imports its API on first use, so Hydra's composition errors come in well under a second.
    probe = "import runner.cli, sys\nsys.argv = ['runner', 'trainer.epoch=3']\ntry:\n    runner.cli.main()\nexcept SystemExit as e:\n    print(e.code, 'torch' in sys.modules)\n"
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["2", "False"], result.stderr
    assert result.stderr == "runner: config error:\n  trainer.epoch: unknown key; did you mean 'epochs'?\n"


def test_inspect_reports_a_merged_layers_override_without_a_traceback():
    done = run_module("runner.inspect", "model.layers={fc: {type: Linear, in_features: 64, out_features: 10}}")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "model=custom '+model.layers={...}'" in done.stderr
    assert len(done.stderr.splitlines()) == 2


def test_a_tracker_setting_without_a_tracker_exits_2_naming_the_option_to_add(tmp_path):
    words = "tracker.uri: tracker is off unless selected: add +tracker=mlflow"
    for args in (["tracker.uri=sqlite:///x.db", "trainer.max_steps=1", f"hydra.run.dir={tmp_path / 'run'}"],
                 ["-m", "tracker.uri=sqlite:///x.db", "seed=0,1", "trainer.max_steps=1", f"hydra.sweep.dir={tmp_path / 'sweep'}"]):
        result = run_cli(*args)
        assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()
    with pytest.raises(runner.ConfigError, match=words.replace("+", r"\+")):
        runner.compose(["tracker.uri=sqlite:///x.db"])


def test_help_lists_the_groups_the_entry_points_and_examples():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for words in ("python -m runner resume=RUN_DIR", "python -m runner.inspect", "python -m runner.evaluate RUN_DIR", "python -m runner -m",
                  "experiment: autoencoder, finetune", "model: autoencoder, cnn", "+search=lr_init", "+tracker=mlflow", "docs/config.md"):
        assert words in text, words
    examples = text.split("Examples:")[1].split("==")[0]
    assert len([line for line in examples.splitlines() if line.strip().startswith("python -m runner")]) == 3
    assert "powered by Hydra" not in text


def test_a_run_refused_before_it_starts_leaves_no_run_directory(tmp_path):
    refused = run_cli("optim.lr=-1", cwd=tmp_path)
    assert refused.returncode == 2 and "optim.lr: expected a number > 0" in refused.stderr
    assert not (tmp_path / "runs").exists()  # not runs/<date>/<time>/.hydra, nor the empty runs/<date>/
    done = run_cli("trainer.max_steps=2", "trainer.progress=off", "trainer.plots=false", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (kept,) = (tmp_path / "runs").glob("*/*")
    assert run_cli("optim.lr=-1", cwd=tmp_path).returncode == 2
    assert list((tmp_path / "runs").glob("*/*")) == [kept] and (kept / "summary.json").is_file()  # a finished run is left alone
    (tmp_path / "mine").mkdir()  # hydra.run.dir=. is the user's own directory: never removed
    assert run_cli("optim.lr=-1", "hydra.run.dir=.", cwd=tmp_path / "mine").returncode == 2 and (tmp_path / "mine").is_dir()


@pytest.mark.parametrize(("override", "message"), [
    ("trainer.epoch=3", "trainer.epoch: unknown key; did you mean 'epochs'?"),
    ("optim.lrr=0.1", "optim.lrr: unknown key; did you mean 'lr'?; an optimizer argument of its own is added with +optim.lrr=..."),
    ("model=cnnn", "model: no option 'cnnn' in model; did you mean 'cnn'?"),
])
def test_hydras_refusals_are_reported_as_config_errors_with_did_you_mean(tmp_path, override, message):
    # Before: Hydra's own report, advising `+trainer.epoch=3` (which only adds the typo), over 7 lines. In a sweep the
    # bad value may come second (`model=mlp,cnnn`): Hydra checks every job before the first runs, and so does runner.
    swept = {"trainer.epoch=3": "trainer.epoch=1,3", "model=cnnn": "model=mlp,cnnn"}.get(override, override)
    for args in ([override], ["-m", swept, f"hydra.sweep.dir={tmp_path / 'sweep'}"]):
        done = run_cli(*args, cwd=tmp_path)
        assert done.returncode == 2 and done.stderr == f"runner: config error:\n  {message}\n", done.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "sweep").exists()  # no run, no sweep directory


def _broken_user_config(tmp_path):
    (tmp_path / "mine" / "model").mkdir(parents=True)
    (tmp_path / "mine" / "model" / "wide.yaml").write_text("name: wide\nlayers:\n  fc1: {type: Linear, in_features: 64\n  head: {}\n")
    return tmp_path / "mine"


def test_a_yaml_syntax_error_in_a_users_config_file_is_named_by_file_line_and_column(tmp_path):
    mine = _broken_user_config(tmp_path)
    expected = f"  {mine / 'model' / 'wide.yaml'}:4:7: YAML syntax: expected ',' or '}}', but got ':' (while parsing a flow mapping)"
    done = run_cli("--config-dir", str(mine), "model=wide", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.splitlines() == ["runner: config error:", expected], done.stderr
    with pytest.raises(runner.ConfigError) as error:  # the Python API reads it the same way
        runner.compose(["model=wide", f"hydra.searchpath=[file://{mine}]"])
    assert str(error.value).splitlines()[1] == expected
    inspected = run_module("runner.inspect", f"--config-dir={mine}", "model=wide", cwd=tmp_path)
    assert inspected.returncode == 2 and inspected.stderr.splitlines()[1] == expected


def test_inspect_takes_the_command_line_of_python_m_runner(tmp_path):
    (tmp_path / "mine" / "model").mkdir(parents=True)
    (tmp_path / "mine" / "model" / "wide.yaml").write_text("name: wide\nlayers:\n  fc1: {type: Linear, in_features: 64, out_features: 10}\n")
    shown = run_module("runner.inspect", "--config-dir", str(tmp_path / "mine"), "model=wide", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    rows = [line.split(" | ") for line in shown.stdout.splitlines() if line.startswith("| fc1.")]
    assert [(row[0], row[2]) for row in rows] == [("| fc1.weight", "10x64"), ("| fc1.bias", "10")]  # the user's model, not conf/'s
    helped = run_module("runner.inspect", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: python -m runner.inspect [--config-dir DIR]") and not helped.stderr
    typo = run_module("runner.inspect", "trainer.epoch=3", cwd=tmp_path)
    assert typo.returncode == 2 and typo.stderr == "runner: config error:\n  trainer.epoch: unknown key; did you mean 'epochs'?\n"
    for command in (["runner.inspect"], ["runner"]):  # not a directory: refused, naming the option (inspect ignored it)
        missing = run_module(*command, "--config-dir", str(tmp_path / "nowhere"), "trainer.max_steps=1", cwd=tmp_path)
        assert missing.returncode == 2 and missing.stderr == f"runner: config error:\n  --config-dir: no such directory: {tmp_path / 'nowhere'}\n"
    unknown = run_module("runner.inspect", "--confg-dir", "x", cwd=tmp_path)
    assert unknown.returncode == 2 and "--confg-dir: not an option of runner.inspect; did you mean '--config-dir'" in unknown.stderr


def test_a_typo_beside_a_sweep_of_lists_or_a_range_is_the_one_named(tmp_path):
    # runner recomposes a refused sweep at each override's first value, read by Hydra's parser: `[fc1],[fc2]` is two lists.
    for sweep in ("trainer.watch=[fc1],[fc2]", "seed=range(2)"):
        done = run_cli("-m", sweep, "trainer.epochz=1", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
        assert done.returncode == 2 and done.stderr == "runner: config error:\n  trainer.epochz: unknown key; did you mean 'epochs'?\n", done.stderr
