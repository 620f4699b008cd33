"""Presets match the published parameter counts (docs/ling_spec.md §2.5), counted from abstract
shapes; configs round-trip through JSON; overrides are typed and fail with useful messages."""

import dataclasses
import json

import pytest

import lingjax
from lingjax import configs

# Published totals without MTP weights (docs/ling_spec.md §2.5; exact for Ling 2.0).
EXACT_TOTALS = {
    "ling-mini-2.0": 16_255_643_392,
    "ling-flash-2.0": 102_889_705_216,
    "ling-1t": 999_705_328_640,
}


@pytest.mark.parametrize("name", sorted(EXACT_TOTALS))
def test_ling2_totals_exact(name):
    assert lingjax.count_params(configs.get(name).model)["total"] == EXACT_TOTALS[name]


def test_ling_mini_active_and_non_embedding():
    n = lingjax.count_params(configs.get("ling-mini-2.0").model)
    assert n["active"] == 1_432_973_056  # "1.43B active"
    assert n["active_non_embedding"] == 789_147_392  # "789M non-embedding active"
    assert n["mtp"] > 0  # the preset trains one MTP layer; not part of the published total


@pytest.mark.parametrize(
    "name,total,active,tol",
    [
        ("ling-lite", 16.8e9, 2.75e9, 0.01),
        ("ling-coder-lite", 16.8e9, 2.75e9, 0.01),
        ("ling-plus", 290e9, 28.8e9, 0.02),
    ],
)
def test_ling_v1_totals(name, total, active, tol):
    n = lingjax.count_params(configs.get(name).model)
    assert abs(n["total"] / total - 1) < tol
    assert abs(n["active"] / active - 1) < tol
    assert n["mtp"] == 0


def test_every_preset_validates_and_round_trips_json():
    for name in configs.names():
        cfg = configs.get(name)
        again = configs.from_dict(json.loads(configs.to_json(cfg)))
        assert again == cfg, name


def test_overrides_are_typed_and_resolved():
    cfg = configs.get("ling-mini-2.0", num_layers=4, **{"train.lr": "1e-3"})
    assert cfg.model.num_layers == 4 and cfg.train.lr == 1e-3
    assert configs.get("tiny", model__moe__capacity_factor="none").model.moe.capacity_factor is None
    assert (
        configs.get("tiny", **{"model.moe.capacity_factor": "1.5"}).model.moe.capacity_factor == 1.5
    )
    assert configs.get("tiny", **{"model.norm_head": "false"}).model.norm_head is False


@pytest.mark.parametrize(
    "overrides,needle",
    [
        ({"model.num_layer": 2}, "model.num_layers"),
        ({"train.steps": "forty"}, "train.steps"),
        ({"train.steps": 2.5}, "expected int"),
        ({"model.moe.score_function": "relu"}, "'softmax', 'sigmoid'"),
        ({"model.attention.impl": "flash"}, "'auto', 'xla', 'pallas', 'cudnn', 'tokamax'"),
        ({"model.moe.n_group": 3}, "must divide num_experts"),
        ({"model.attention.num_kv_heads": 3}, "multiple of"),
        ({"steps": 0}, "train.steps=0 must be > 0"),
        ({"model.hidden_size": -8}, "model.hidden_size=-8 must be a positive integer"),
        ({"mesh.fsdp": 0}, "mesh.fsdp=0 must be a positive size"),
        ({"checkpoint.keep": 0}, "checkpoint.keep=0 must be >= 1"),
    ],
)
def test_bad_overrides_name_the_key(overrides, needle):
    with pytest.raises(configs.ConfigError, match=None) as e:
        configs.get("tiny", **overrides)
    assert needle in str(e.value)


# Keys where -7 is a valid value (seeds), everything else must refuse it by name.
_NEGATIVE_OK = {"train.seed", "data.seed"}


def test_every_numeric_key_refuses_a_bad_value_by_name_and_value():
    """A sweep of Config.validate(): -7 in any numeric field is refused with one ConfigError
    that names the dotted key and the value (or is a value the key accepts)."""
    base = configs.get("tiny")
    checked = 0
    for path, tp in configs.leaf_paths(configs.Config):
        if tp not in (int, float) and str(tp) not in ("float | None",):
            continue
        try:
            configs.apply(base, {path: -7})
        except configs.ConfigError as e:
            msg = str(e)
            assert path in msg and "-7" in msg, f"{path}: {msg}"
            checked += 1
        else:
            assert path in _NEGATIVE_OK, f"{path}=-7 was accepted"
    assert checked > 40


def test_unknown_preset_suggests_names():
    with pytest.raises(configs.ConfigError) as e:
        configs.get("ling-mini")
    assert "ling-mini-2.0" in str(e.value)


def test_replace_keeps_frozen():
    cfg = configs.get("tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.num_layers = 3  # type: ignore[misc]
