"""`+tracker=mlflow`: runs, parameters, metrics and artifacts read back with MLflow's own client."""

from __future__ import annotations

import json
import logging
import shutil
import sys

import pytest
import yaml

import runner
from conftest import NaNBatchesAt, run_cli
from runner.errors import ConfigError, RunError
from runner.prepare.plan import validate
from runner.run import checkpoint, tracking
from runner.run.directory import read_metrics

mlflow = pytest.importorskip("mlflow")  # installed with the test extras; skipped only where it is not


def _client(uri: str):
    return mlflow.MlflowClient(tracking_uri=uri)


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.mark.slow
def test_a_sweep_is_one_experiment_with_one_run_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("-m", "init=xavier,normal", "+tracker=mlflow", "trainer.epochs=2", "trainer.progress=off", f"hydra.sweep.dir={sweep}",
                     cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "mlflow.db").is_file()  # the default store: SQLite in the working directory
    client = _client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(str(sweep))
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["init=normal +tracker=mlflow trainer.epochs=2 trainer.progress=off",
                            "init=xavier +tracker=mlflow trainer.epochs=2 trainer.progress=off"]
    for job, scheme in (("0", "xavier"), ("1", "normal")):
        run = next(r for name, r in runs.items() if name.startswith(f"init={scheme}"))
        assert run.info.status == "FINISHED"
        saved = yaml.safe_load((sweep / job / "config.yaml").read_text())
        params = run.data.params
        assert params["init.name"] == scheme and params["optim.lr"] == str(saved["optim"]["lr"]) and params["trainer.epochs"] == "2"
        assert params["model.layers.fc1.out_features"] == "128" and params["tracker.experiment"] == str(sweep)
        records = read_metrics(sweep / job / "metrics.jsonl")
        train, evals = [r for r in records if r["kind"] == "train"], [r for r in records if r["kind"] == "eval"]
        assert _history(client, run.info.run_id, "loss") == [(r["step"], pytest.approx(r["loss"])) for r in train]
        assert _history(client, run.info.run_id, "grad_norm/fc1.weight") == [(r["step"], pytest.approx(r["grad_norm/fc1.weight"])) for r in train]
        assert _history(client, run.info.run_id, "val_loss") == [(r["step"], pytest.approx(r["val_loss"])) for r in evals]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"summary.json", "tensors.md", "loss.png", "grad_norms.png"} <= artifacts
        local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="summary.json", dst_path=str(tmp_path / f"dl{job}"),
                                                    tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
        assert json.loads(open(local).read()) == json.loads((sweep / job / "summary.json").read_text())


def test_a_resumed_run_goes_on_in_the_same_mlflow_run(compose, tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    overrides = ("+tracker=mlflow", f"tracker.uri={uri}", "trainer.epochs=2", "trainer.ckpt_every=10", "trainer.keep_last=10")
    runner.train(compose(*overrides), tmp_path / "run")
    first = json.loads((tmp_path / "run" / "tracker.json").read_text())["run_id"]
    for late in checkpoint.list_checkpoints(tmp_path / "run" / "checkpoints")[2:]:
        shutil.rmtree(late)
    (tmp_path / "run" / "summary.json").unlink()
    runner.resume(tmp_path / "run")
    client = _client(uri)
    runs = client.search_runs([client.get_experiment_by_name("runner").experiment_id])
    assert [r.info.run_id for r in runs] == [first] and runs[0].info.status == "FINISHED"
    assert runs[0].info.artifact_uri.startswith((tmp_path / "mlruns").as_uri())  # beside the store, not in the working directory
    evals = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "eval"]
    assert _history(client, first, "val_loss")[-1] == (evals[-1]["step"], pytest.approx(evals[-1]["val_loss"]))


def test_a_run_that_fails_is_marked_failed(compose, tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    with pytest.raises(RunError, match="step 3: the training loss is nan"):
        runner.train(compose("+tracker=mlflow", f"tracker.uri={uri}", "tracker.experiment=failing", "trainer.max_steps=20"), tmp_path / "run",
                     callbacks=[NaNBatchesAt(3)])
    client = _client(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("failing").experiment_id])
    assert run.info.status == "FAILED"


def test_a_tracking_failure_mid_run_does_not_stop_training(compose, tmp_path, monkeypatch, caplog):
    # A logging process that dies at once, as one would when the tracking server goes away.
    died = [sys.executable, "-c", "import sys; sys.stdin.close(); sys.exit('ConnectionError: the tracking server went away')"]
    monkeypatch.setattr(tracking, "child_command", lambda uri, run_id: died)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    with caplog.at_level(logging.WARNING, logger="runner"):
        summary = runner.train(compose("+tracker=mlflow", f"tracker.uri={uri}", "trainer.max_steps=30", "trainer.log_every=10"), tmp_path / "run")
    assert summary["steps"] == 30 and len([r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]) == 4  # steps 1, 10, 20, 30
    warnings = [r.message for r in caplog.records if "MLflow tracking stopped" in r.message]
    assert len(warnings) == 1 and warnings[0].endswith("ConnectionError: the tracking server went away")
    client = _client(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("runner").experiment_id])
    assert run.info.status == "FINISHED" and "summary.json" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_a_store_that_cannot_open_stops_before_training(compose, tmp_path):
    (tmp_path / "a_file").write_text("")  # a store "inside" a plain file cannot be created
    uri = f"sqlite:///{tmp_path / 'a_file' / 'm.db'}"
    with pytest.raises(RunError, match=f"^tracker: MLflow at {uri} could not open the run"):
        runner.train(compose("+tracker=mlflow", f"tracker.uri={uri}"), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_an_unknown_tracker_is_named(compose):
    with pytest.raises(ConfigError) as raised:
        validate(compose("+tracker=mlflow", "tracker.name=wandb"))
    assert "tracker.name: expected one of mlflow, got 'wandb'" in str(raised.value)
