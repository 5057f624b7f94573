"""Flatten a nested run configuration into MLflow parameters.

MLflow parameters are a flat ``str -> str`` map with a bounded value length, while the platform's
config is a tree (``{"merge": {"rule": "validated", "tolerance": 0.01}}``). Dotted keys
(``merge.rule``) keep the tree readable in the MLflow UI and let runs be compared field by field.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

#: MLflow's limit on a parameter value (``mlflow.utils.validation.MAX_PARAM_VAL_LENGTH``); values
#: longer than this are cut here rather than left to MLflow, which would cut them with a warning.
MAX_PARAM_VALUE_LENGTH = 6000


def flatten_config(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into one level with dot-joined keys.

    Only mappings are descended into; lists, tuples and other values are leaves (a list of device
    profiles is one parameter, not one per index, so the key set stays stable across runs). An
    empty nested mapping is kept as the leaf ``{}`` so that its presence is not silently lost.

    Args:
        d: The (possibly nested) configuration, e.g. ``config.model_dump(mode="json")``. Keys must be
            ``str`` or ``int`` (an ``int`` key such as a device index is written as its decimal).
        prefix: Key prefix for every entry, without the trailing dot (``"cloud"`` gives
            ``cloud.lr``); ``""`` for none.

    Returns:
        ``{dotted_key: leaf_value}`` in the mapping's iteration order; leaf values are unchanged.

    Raises:
        TypeError: If ``d`` (or a nested value being descended into) is not a mapping, or a key is
            neither ``str`` nor ``int``.
        ValueError: If a key is empty or two paths flatten to the same dotted key
            (e.g. ``{"a.b": 1, "a": {"b": 2}}``).
    """
    if not isinstance(d, Mapping):
        raise TypeError(f"config must be a mapping, got {type(d).__name__}")
    flat: dict[str, Any] = {}
    _flatten_into(flat, d, prefix)
    return flat


def _flatten_into(flat: dict[str, Any], d: Mapping[Any, Any], prefix: str) -> None:
    for key, value in d.items():
        # bool is an int subclass but a True/False key is almost certainly a bug upstream.
        if isinstance(key, bool) or not isinstance(key, (str, int)):
            raise TypeError(f"config key {key!r} under {prefix or '<root>'!r} must be str or int")
        name = str(key)
        if not name:
            raise ValueError(f"empty config key under {prefix or '<root>'!r}")
        dotted = f"{prefix}.{name}" if prefix else name
        if isinstance(value, Mapping) and value:
            _flatten_into(flat, value, dotted)
            continue
        if dotted in flat:
            raise ValueError(f"config keys collide after flattening: {dotted!r} appears twice")
        flat[dotted] = {} if isinstance(value, Mapping) else value


def param_value(value: Any, max_length: int = MAX_PARAM_VALUE_LENGTH) -> str:
    """Render one config leaf as an MLflow parameter value.

    Args:
        value: A config leaf (number, string, ``None``, enum, path, list, ...).
        max_length: Longest value kept, in characters; longer renderings are cut to this length.

    Returns:
        ``str(value)`` (an enum's ``.value``, a path's POSIX form), at most ``max_length`` characters.

    Raises:
        ValueError: If ``max_length`` is less than 1.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    if isinstance(value, enum.Enum):
        value = value.value
    text = value.as_posix() if isinstance(value, PurePath) else str(value)
    return text[:max_length]


def config_params(config: Mapping[str, Any], max_length: int = MAX_PARAM_VALUE_LENGTH) -> dict[str, str]:
    """Flatten a configuration and render every leaf as a parameter value.

    Args:
        config: The nested configuration (see :func:`flatten_config`).
        max_length: Longest parameter value, in characters.

    Returns:
        ``{dotted_key: value_string}`` ready to be logged as MLflow parameters.

    Raises:
        TypeError: See :func:`flatten_config`.
        ValueError: See :func:`flatten_config` and :func:`param_value`.
    """
    return {key: param_value(value, max_length) for key, value in flatten_config(config).items()}
