"""The Optuna sweeper (hydra/sweeper=optuna): pruning checked against the median rule, the study read back
with Optuna's own API, a continued study, the search-space grammar."""

from __future__ import annotations

import statistics

import optuna
import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from conftest import read_csv, run_cli
from runner.errors import ConfigError
from runner.run.directory import read_metrics
from runner.sweep.search import distribution
from runner.training.pruning import make_pruner

pytestmark = pytest.mark.xdist_group("search")  # one worker builds the module's shared fixture

# Four epochs of digits: evaluations 0-3. Learning rates a decade apart, so some trials trail the rest.
SEARCH = ["+search=lr_init", "hydra.sweeper.n_trials=8", "hydra.sweeper.sampler.name=random", "seed=3",
          "optim.lr=choice(0.00003,0.0003,0.003)", "init=choice(xavier,normal)",
          "hydra.sweeper.pruner.n_warmup_steps=1", "trainer.epochs=4", "trainer.threads=1", "trainer.progress=off",
          "trainer.tensorboard=false", "trainer.plots=false"]


def _rows(sweep_dir) -> list[dict]:
    return read_csv(sweep_dir / "report.csv")


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    sweep = tmp_path_factory.mktemp("search")
    result = run_cli("-m", *SEARCH, f"hydra.sweep.dir={sweep}", timeout=600)
    assert result.returncode == 0, result.stderr
    # The terminal: one line a trial, and never the overrides the sweeper passes its jobs internally.
    assert "RUNNER_OPTUNA" not in result.stdout + result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("sweep: job ")]) == 8
    return sweep, optuna.load_study(study_name=sweep.name, storage=f"sqlite:///{sweep / 'optuna.db'}")


@pytest.mark.slow
def test_pruned_trials_follow_the_median_rule(search):
    sweep, study = search
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 8
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, "the search pruned nothing: the test's learning rates no longer separate the trials"
    for trial in pruned:
        step = max(trial.intermediate_values)
        assert step >= 1  # n_warmup_steps=1: the first evaluation is never pruned
        earlier = [t for t in trials if t.number < trial.number and t.state == TrialState.COMPLETE and step in t.intermediate_values]
        if len(earlier) < 2:  # n_startup_trials=2
            pytest.fail(f"trial {trial.number} was pruned with {len(earlier)} finished trials before it")
        assert trial.intermediate_values[step] > statistics.median(t.intermediate_values[step] for t in earlier)
    for trial in trials:  # every evaluation the job logged was reported, at its index
        evals = [r["val_loss"] for r in read_metrics(sweep / str(trial.number) / "metrics.jsonl") if r["kind"] == "eval"]
        assert [trial.intermediate_values[i] for i in sorted(trial.intermediate_values)] == pytest.approx(evals)
        if trial.state == TrialState.COMPLETE:
            assert trial.value == pytest.approx(evals[-1]) and len(evals) == 4


@pytest.mark.slow
def test_the_report_and_results_show_pruned_trials(search):
    sweep, study = search
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    rows = _rows(sweep)
    assert [r["status"] for r in rows] == ["pruned" if states[int(r["job"])] == TrialState.PRUNED else "ok" for r in rows]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["trials"] == {"complete": sum(s == TrialState.COMPLETE for s in states.values()),
                                 "pruned": sum(s == TrialState.PRUNED for s in states.values()), "fail": 0}
    assert results["best_value"] == pytest.approx(study.best_value) and results["best_params"] == study.best_params
    assert "pruned by the search" in (sweep / "report.md").read_text()


@pytest.mark.slow
def test_the_same_command_continues_the_study(search):
    sweep, _ = search
    result = run_cli("-m", *SEARCH[:1], "hydra.sweeper.n_trials=9", *SEARCH[2:], f"hydra.sweep.dir={sweep}", timeout=600)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name=sweep.name, storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert len(study.trials) == 9 and len(_rows(sweep)) == 9  # one more trial, none repeated


@pytest.mark.parametrize("text, expected", [
    ("choice(a, b)", CategoricalDistribution(["a", "b"])),
    ("interval(0.1, 1.0)", FloatDistribution(0.1, 1.0)),
    ("tag(log, interval(1e-4, 1e-2))", FloatDistribution(1e-4, 1e-2, log=True)),
    ("interval(1, 8)", FloatDistribution(1.0, 8.0)),  # Hydra reads interval ends as floats
    ("range(16, 80, 16)", IntDistribution(16, 64, step=16)),
    ("range(1, 10, 4)", IntDistribution(1, 9, step=4)),  # Hydra's range: 1, 5, 9
    ("range(0.1, 0.5, 0.1)", FloatDistribution(0.1, 0.4, step=0.1)),
    ("range(0, 1, 0.3)", FloatDistribution(0.0, 0.9, step=0.3)),
])
def test_sweep_grammar_becomes_optuna_distributions(text, expected):
    (override,) = OverridesParser.create().parse_overrides([f"x={text}"])
    got = distribution("x", override.value())
    assert type(got) is type(expected)
    assert got == expected if isinstance(got, CategoricalDistribution) else got._asdict() == pytest.approx(expected._asdict())


def test_a_tag_outside_an_interval_is_named():
    (override,) = OverridesParser.create().parse_overrides(["x=tag(log, choice(1, 10))"])
    with pytest.raises(ConfigError, match=r"hydra.sweeper.params.x: tags \(log\) are read on interval\(...\) only"):
        distribution("x", override.value())


def test_an_unknown_pruner_is_named():
    with pytest.raises(ConfigError, match="hydra.sweeper.pruner.name: expected one of median, percentile"):
        make_pruner({"name": "mediam"})


@pytest.mark.slow
@pytest.mark.parametrize("setting, words", [
    ("hydra.sweeper.pruner.name=mediam", "hydra.sweeper.pruner.name: expected one of median, percentile"),
    ("hydra.sweeper.objective=val_top5", "hydra.sweeper.objective: 'val_top5' is not logged by these jobs; they log: val_loss, train_loss, val_accuracy"),
    ("hydra.sweeper.objective=accuracy", "hydra.sweeper.objective: 'accuracy' is not logged by these jobs; they log: val_loss, train_loss, "
                                         "val_accuracy (a metric is logged when `metrics:` names it); did you mean 'val_accuracy'?"),
])
def test_a_bad_sweeper_setting_exits_2_naming_it_before_any_trial(tmp_path, setting, words):
    result = run_cli("-m", "+search=lr_init", setting, f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"runner: config error:\n  {words}" in result.stderr
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "0").exists()


@pytest.mark.slow
def test_a_metric_as_the_objective_is_maximized_pruned_on_and_ranked_by(tmp_path):
    # val_accuracy: Optuna maximizes it, the pruner reads it at each evaluation, and the report's Best is the highest.
    result = run_cli("-m", *SEARCH[:1], "hydra.sweeper.n_trials=4", *SEARCH[2:], "trainer.epochs=2", "hydra.sweeper.objective=val_accuracy",
                     f"hydra.sweep.dir={tmp_path}", timeout=600)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name=tmp_path.name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    accuracy = {}
    for trial in study.get_trials(deepcopy=False):
        evals = [r["val_accuracy"] for r in read_metrics(tmp_path / str(trial.number) / "metrics.jsonl") if r["kind"] == "eval"]
        assert [trial.intermediate_values[i] for i in sorted(trial.intermediate_values)] == pytest.approx(evals)
        if trial.state == TrialState.COMPLETE:
            assert trial.value == pytest.approx(evals[-1])
            accuracy[trial.number] = evals[-1]
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert results["objective"] == "val_accuracy" and results["direction"] == "maximize"
    assert results["best_value"] == pytest.approx(max(accuracy.values()))
    best = max(accuracy, key=accuracy.get)
    assert f"**Best:** job {best} (" in (tmp_path / "report.md").read_text()
    assert "(by val_accuracy, the search's objective, highest)" in (tmp_path / "report.md").read_text()
