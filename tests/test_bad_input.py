"""Bad config input: one ConfigError listing every problem, each naming its key, before any work."""

from __future__ import annotations

import numpy as np
import pytest

import runner
from runner.errors import ConfigError
from runner.spec import validate


def problems_of(cfg) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        validate(cfg)
    return {p.key: p.message for p in caught.value.problems}


def test_unknown_layer_type_suggests_the_nearest(compose):
    found = problems_of(compose("model.layers.fc1.type=Linaer"))
    assert "did you mean 'Linear'" in found["model.layers.fc1.type"]


def test_wrong_constructor_argument_is_named(compose):
    found = problems_of(compose("+model.layers.fc1.out_feature=3"))
    assert "did you mean 'out_features'" in found["model.layers.fc1.out_feature"]


def test_missing_required_constructor_argument(compose):
    found = problems_of(compose("~model.layers.fc1.out_features"))
    assert "requires `out_features`" in found["model.layers.fc1.out_features"]


def test_negative_size(compose):
    found = problems_of(compose("model.layers.fc2.out_features=-4"))
    assert "size >= 0" in found["model.layers.fc2.out_features"]


def test_shape_mismatch_between_layers_names_the_layer(compose):
    found = problems_of(compose("model.layers.fc2.in_features=100"))
    assert "'fc2' (Linear) failed" in found["model.layers"]


def test_output_size_must_fit_the_data(compose):
    found = problems_of(compose("model.layers.head.out_features=7"))
    assert "data.num_outputs=10" in found["model.layers"]


def test_shared_must_name_an_earlier_layer(compose):
    found = problems_of(compose("model=tied_mlp", "model.layers.shared_again.shared=head"))
    assert "not an earlier layer" in found["model.layers.shared_again.shared"]


def test_every_problem_is_reported_at_once(compose):
    found = problems_of(compose("optim.lr=0", "trainer.batch_size=0", "model.layers.fc1.type=Lineer", "trainer.dtype=float8"))
    assert {"optim.lr", "trainer.batch_size", "model.layers.fc1.type", "trainer.dtype"} <= set(found)


def test_unknown_choice_names_the_options(compose):
    found = problems_of(compose("optim.name=adamm"))
    assert "did you mean 'adam'" in found["optim.name"]


def test_unavailable_device_names_what_is_available(compose):
    found = problems_of(compose("trainer.device=cuda:7"))
    assert "available: cpu" in found["trainer.device"]


def test_missing_data_file(compose, tmp_path):
    found = problems_of(compose("data=file", f"data.path={tmp_path}/nope.npz", "data.num_features=4", "data.num_outputs=2"))
    assert "no such file" in found["data.path"]


def test_file_data_without_a_path(compose):
    found = problems_of(compose("data=file", "data.num_features=4", "data.num_outputs=2"))
    assert "required" in found["data.path"]


def test_file_data_of_the_wrong_width(compose, tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, features=np.zeros((10, 5)), targets=np.zeros(10, dtype=np.int64))
    cfg = compose("data=file", f"data.path={path}", "data.num_features=4", "data.num_outputs=2")
    with pytest.raises(ConfigError, match="data.num_features: is 4 but the data has 5 features"):
        runner.build(cfg)


def test_non_numeric_csv(compose, tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b,y\n1,2,0\n3,oops,1\n")
    cfg = compose("data=file", f"data.path={path}", "data.num_features=2", "data.num_outputs=2")
    with pytest.raises(ConfigError, match="data.path: .*non-numeric"):
        runner.build(cfg)


def test_file_data_trains(compose, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    y = (x[:, 0] > 0).astype(np.int64)
    path = tmp_path / "d.npz"
    np.savez(path, features=x, targets=y)
    cfg = compose("data=file", f"data.path={path}", "data.num_features=4", "data.num_outputs=2", "trainer.epochs=30")
    summary = runner.train(cfg, tmp_path / "run")
    assert summary["val_accuracy"] >= 0.9
