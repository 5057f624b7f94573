"""Config flattening into MLflow params: dotted keys, leaves kept, collisions and bad keys rejected."""

from __future__ import annotations

import enum
from pathlib import PurePosixPath

import pytest

from eclm.tracking import MAX_PARAM_VALUE_LENGTH, config_params, flatten_config, param_value


class Rule(enum.Enum):
    VALIDATED = "validated"


@pytest.mark.parametrize(
    ("config", "prefix", "expected"),
    [
        ({"lr": 0.1}, "", {"lr": 0.1}),
        ({"merge": {"rule": "validated", "tol": 0.01}}, "", {"merge.rule": "validated", "merge.tol": 0.01}),
        ({"a": {"b": {"c": 1}}, "d": [1, 2]}, "", {"a.b.c": 1, "d": [1, 2]}),
        ({"devices": {0: {"mem": 2}, 1: {"mem": 4}}}, "", {"devices.0.mem": 2, "devices.1.mem": 4}),
        ({"empty": {}}, "", {"empty": {}}),
        ({"x": None}, "cloud", {"cloud.x": None}),
    ],
)
def test_flatten_config_joins_nested_keys_with_dots(config, prefix, expected):
    assert flatten_config(config, prefix) == expected


def test_every_leaf_survives_flattening():
    config = {"a": {"b": 1, "c": {"d": 2, "e": [3]}}, "f": "g"}

    flat = flatten_config(config)

    def leaves(d):
        for value in d.values():
            yield from leaves(value) if isinstance(value, dict) else [value]

    assert sorted(map(repr, flat.values())) == sorted(map(repr, leaves(config)))


@pytest.mark.parametrize(
    ("config", "error", "match"),
    [
        ({"a.b": 1, "a": {"b": 2}}, ValueError, "collide"),
        ({"": 1}, ValueError, "empty config key"),
        ({(1, 2): 1}, TypeError, "must be str or int"),
        ({True: 1}, TypeError, "must be str or int"),
        ([("a", 1)], TypeError, "must be a mapping"),
    ],
)
def test_flatten_config_rejects_bad_input(config, error, match):
    with pytest.raises(error, match=match):
        flatten_config(config)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.5, "0.5"),
        (None, "None"),
        (Rule.VALIDATED, "validated"),
        (PurePosixPath("data/x"), "data/x"),
        ([1, 2], "[1, 2]"),
    ],
)
def test_param_value_renders_leaves_as_strings(value, expected):
    assert param_value(value) == expected


@pytest.mark.parametrize(
    "length", [MAX_PARAM_VALUE_LENGTH - 1, MAX_PARAM_VALUE_LENGTH, 3 * MAX_PARAM_VALUE_LENGTH]
)
def test_config_params_cut_values_to_mlflow_limit(length):
    params = config_params({"long": "x" * length})

    assert len(params["long"]) == min(length, MAX_PARAM_VALUE_LENGTH)


def test_param_value_rejects_non_positive_length():
    with pytest.raises(ValueError, match="max_length"):
        param_value("x", max_length=0)
