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
    assert "Key 'epoch' not in 'TrainerConfig'" in result.stderr


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
