"""What counts as another model on resume (runner.api._first_difference): a change, but not a setting the saved
config predates."""

from __future__ import annotations

from runner.api import _first_difference


def test_a_changed_value_is_named_with_its_trained_value():
    saved = {"name": "mlp", "layers": {"fc1": {"type": "Linear", "out_features": 128}}}
    changed = {"name": "mlp", "layers": {"fc1": {"type": "Linear", "out_features": 256}}}
    assert _first_difference(saved, changed, "model") == ("model.layers.fc1.out_features", 128)
    assert _first_difference(saved, {**saved, "name": "cnn"}, "model") == ("model.name", "mlp")


def test_a_layer_added_is_a_difference_but_a_newer_setting_at_its_default_is_not():
    saved = {"name": "mlp", "layers": {"fc1": {"type": "Linear"}}}
    added = {"name": "mlp", "layers": {"fc1": {"type": "Linear"}, "fc2": {"type": "Linear"}}}
    assert _first_difference(saved, added, "model") == ("model.layers.fc2", None)
    newer = {**saved, "eval_modules": None, "tensors": {}, "strict": False, "frozen": []}  # keys a later schema added
    assert _first_difference(saved, newer, "model") is None
    assert _first_difference(saved, {**saved, "strict": True}, "model") == ("model.strict", None)


def test_nan_equals_nan_and_lists_compare_item_by_item():
    assert _first_difference({"v": float("nan")}, {"v": float("nan")}, "init") is None
    assert _first_difference({"rules": [{"fn": "a"}, {"fn": "b"}]}, {"rules": [{"fn": "a"}, {"fn": "c"}]}, "init") == ("init.rules[1].fn", "b")
    assert _first_difference({"rules": [1]}, {"rules": [1, 2]}, "init") == ("init.rules", [1])
