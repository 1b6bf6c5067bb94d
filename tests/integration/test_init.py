"""Init rules: the statistics each scheme promises, rule order and strictness, seeds, provenance, errors."""

from __future__ import annotations

import math

import pytest
import torch

import runner
from conftest import config_names, run_cli
from runner.errors import ConfigError
from runner.prepare.plan import validate
from runner.prepare.prepare import prepare

WIDE = ["data=synthetic", "data.num_features=256", "model.layers.fc1.out_features=256", "model.layers.fc2.in_features=256"]


def with_rules(cfg, rules, strict=False):
    cfg.init.rules = rules
    cfg.init.strict = strict
    return cfg


def test_xavier_uniform_std_on_256x256_matches_theory(compose):
    model = runner.build(compose("init=xavier", *WIDE))
    weight = model.fc1.weight  # 256x256, followed by ReLU; Glorot's scheme is gain 1 whatever follows
    expected = math.sqrt(2.0 / (256 + 256))
    assert weight.std().item() == pytest.approx(expected, rel=0.05)
    assert weight.abs().max().item() <= expected * math.sqrt(3) + 1e-6  # uniform's bound


def test_xavier_gain_scales_by_the_following_relu(compose):
    model = runner.build(compose("init=xavier_gain", *WIDE))
    expected = math.sqrt(2.0) * math.sqrt(2.0 / (256 + 256))  # calculate_gain('relu') = sqrt(2)
    assert model.fc1.weight.std().item() == pytest.approx(expected, rel=0.05)


def test_kaiming_normal_std_matches_theory(compose):
    model = runner.build(compose("init=kaiming_normal", *WIDE))
    expected = math.sqrt(2.0) / math.sqrt(256)
    assert model.fc1.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert torch.count_nonzero(model.fc1.bias) == 0


def test_gain_auto_reads_the_following_activation(compose):
    model = runner.build(compose("init=xavier_gain", *WIDE, "model.layers.act1.type=Tanh"))
    expected = (5.0 / 3.0) * math.sqrt(2.0 / 512)  # calculate_gain('tanh') = 5/3
    assert model.fc1.weight.std().item() == pytest.approx(expected, rel=0.05)


def test_piecewise_law(compose):
    model = runner.build(compose("init=piecewise", *WIDE))
    w = model.fc1.weight.flatten()
    zero = (w == 0).float().mean().item()
    assert zero == pytest.approx(0.5, abs=0.03)
    nonzero = w[w != 0].abs()
    assert nonzero.min().item() >= 5.0 and nonzero.max().item() <= 10.0
    assert (w > 0).float().mean().item() == pytest.approx(0.25, abs=0.03)


def test_lsuv_gives_unit_output_variance_per_layer(compose):
    prepared = prepare(validate(compose("init=lsuv")))
    model, batch = prepared.model, prepared.data.train_x[:256]
    outputs = {}
    hooks = [getattr(model, n).register_forward_hook(lambda m, i, o, n=n: outputs.__setitem__(n, o)) for n in ("fc1", "fc2", "head")]
    with torch.no_grad():
        model(batch)
    for hook in hooks:
        hook.remove()
    for name, out in outputs.items():
        assert 0.9 <= out.var().item() <= 1.1, name


def test_mixed_sets_the_last_layer_to_42_exactly(compose):
    model = runner.build(compose("init=mixed"))
    assert torch.equal(model.head.weight, torch.full_like(model.head.weight, 42.0))
    assert not torch.equal(model.fc1.weight, torch.full_like(model.fc1.weight, 42.0))


def test_later_rules_override_earlier_ones(compose):
    cfg = with_rules(compose(), [{"match": "*.weight", "fn": "ones_"}, {"match": "fc1.weight", "fn": "zeros_"}])
    model = runner.build(cfg)
    assert torch.count_nonzero(model.fc1.weight) == 0
    assert torch.equal(model.fc2.weight, torch.ones_like(model.fc2.weight))


def test_selectors_by_module_type_kind_and_regex(compose):
    cfg = with_rules(compose("model=cnn"), [
        {"module": "Conv2d", "kind": "bias", "fn": "constant_", "val": 3.0},
        {"regex": r"^bn\d\.weight$", "fn": "constant_", "val": 2.0},
        {"match": "bn1.running_var", "kind": "buffer", "fn": "constant_", "val": 5.0},
    ])
    model = runner.build(cfg)
    assert torch.all(model.conv1.bias == 3) and torch.all(model.conv2.bias == 3)
    assert torch.all(model.bn2.weight == 2) and torch.all(model.bn1.running_var == 5)
    assert not torch.all(model.head.bias == 3)


def test_strict_requires_every_trainable_tensor_covered(compose):
    cfg = with_rules(compose(), [{"match": "*.weight", "fn": "ones_"}], strict=True)
    with pytest.raises(ConfigError) as caught:
        validate(cfg)
    messages = [str(p) for p in caught.value.problems]
    assert any("fc1.bias" in m for m in messages) and not any("fc1.weight" in m for m in messages)


def test_a_rule_matching_nothing_is_an_error_unless_optional(compose):
    with pytest.raises(ConfigError, match=r"init.rules\[0\]: selects no tensor \(fc9.weight\)"):
        validate(with_rules(compose(), [{"match": "fc9.weight", "fn": "ones_"}]))
    validate(with_rules(compose(), [{"match": "fc9.weight", "fn": "ones_", "optional": True}]))


@pytest.mark.parametrize(("rule", "key", "text"), [
    ({"fn": "xavier_uniformm_"}, "init.rules[0].fn", "did you mean 'xavier_uniform_'"),
    ({"fn": "normal_", "sdt": 1.0}, "init.rules[0].sdt", "did you mean 'std'"),
    ({"fn": "constant_"}, "init.rules[0].val", "requires `val`"),
    ({"regex": "fc(", "fn": "ones_"}, "init.rules[0].regex", "invalid regular expression"),
    ({"fn": "xavier_uniform_", "gain": "rellu"}, "init.rules[0].gain", "did you mean 'relu'"),
    ({"fn": "ones_", "kind": "weights"}, "init.rules[0].kind", "expected one of weight, bias, buffer, any"),
])
def test_bad_rules_name_the_rule_and_key(compose, rule, key, text):
    with pytest.raises(ConfigError) as caught:
        validate(with_rules(compose(), [rule]))
    found = {p.key: p.message for p in caught.value.problems}
    assert text in found[key]


def test_two_rules_on_two_aliases_of_a_tied_tensor_conflict(compose):
    cfg = with_rules(compose("model=tied_mlp"), [
        {"match": "shared.weight", "fn": "ones_"},
        {"match": "shared_again.weight", "fn": "zeros_"},
    ])
    with pytest.raises(ConfigError, match="'shared.weight' and 'shared_again.weight' are one tied tensor"):
        validate(cfg)


def test_a_tied_tensor_is_initialized_once(compose):
    cfg = with_rules(compose("model=tied_mlp"), [{"match": "*.weight", "fn": "ones_"}])
    model = runner.build(cfg)
    assert torch.equal(model.shared.weight, torch.ones(8, 8))


def test_same_seed_same_weights_other_seed_other_weights(compose):
    a = runner.build(compose("init=xavier"))
    b = runner.build(compose("init=xavier"))
    c = runner.build(compose("init=xavier", "seed=1"))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.fc1.weight, c.fc1.weight)


def test_default_init_is_seeded_too(compose):
    a, b = runner.build(compose()), runner.build(compose())
    assert torch.equal(a.fc1.weight, b.fc1.weight)


def test_registered_function_can_be_named_in_rules(compose):
    def halves_(tensor, value=0.5):
        with torch.no_grad():
            return tensor.fill_(value)

    runner.register_init("halves", halves_)
    model = runner.build(with_rules(compose(), [{"match": "head.weight", "fn": "halves", "value": 0.25}]))
    assert torch.all(model.head.weight == 0.25)


def test_provenance_and_predicted_std_in_the_tensor_table(compose):
    from runner.prepare.tensor_table import tensor_rows

    rows = {r["name"]: r for r in tensor_rows(prepare(validate(compose("init=kaiming_normal", *WIDE))))}
    fc1 = rows["fc1.weight"]
    assert fc1["init"].startswith("rule[0] kaiming_normal_")
    assert fc1["predicted_std"] == pytest.approx(math.sqrt(2 / 256))
    assert fc1["std"] == pytest.approx(fc1["predicted_std"], rel=0.05)
    assert rows["fc1.bias"]["init"] == "rule[1] zeros_()"


@pytest.mark.parametrize("init", config_names("init"))
def test_every_shipped_scheme_trains_a_few_steps(compose, tmp_path, init):
    summary = runner.train(compose(f"init={init}", "trainer.max_steps=5"), tmp_path)
    assert summary["steps"] == 5


@pytest.mark.slow
def test_multirun_over_four_schemes(tmp_path):
    result = run_cli("-m", "init=xavier,kaiming,normal,orthogonal", "trainer.max_steps=3", "trainer.progress=off", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    inits = sorted((tmp_path / str(i) / "config.yaml").read_text().split("init:\n  name: ")[1].split()[0] for i in range(4))
    assert inits == ["kaiming", "normal", "orthogonal", "xavier"]
