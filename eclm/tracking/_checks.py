"""Input checks for the campaign tracker: names MLflow accepts, numbers, steps, safetensors blobs.

Bad input is a bug in the caller and raises here, with the offending field named, *before*
anything is sent to MLflow, so that it can never be mistaken for a tracking-server outage (which
the tracker absorbs by degrading to its journal).
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping
from typing import Any

#: MLflow's limit on metric/param/tag key length (``MAX_ENTITY_KEY_LENGTH``).
MAX_KEY_LENGTH = 250
#: The characters MLflow allows in metric and param names on POSIX systems.
_MLFLOW_NAME = re.compile(r"^[/\w.\- :]+$")
#: Model version tags become folder names (``models/<tag>``), so keep them path-safe.
_VERSION_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
#: MLflow registry aliases: letters, digits, ``_ -``; ``latest`` and ``v<digits>`` are reserved.
_ALIAS = re.compile(r"^(?!latest$)(?!v\d+$)[A-Za-z0-9_-]{1,255}$")
_SAFETENSORS_PREFIX_BYTES = 8  # little-endian u64 header length


def check_key(kind: str, key: Any) -> str:
    """Check a metric/param/tag key against MLflow's naming rules.

    Args:
        kind: What the key names, for the error message (``"metric"``, ``"config key"``, ...).
        key: The key.

    Returns:
        ``key`` unchanged.

    Raises:
        TypeError: If ``key`` is not a ``str``.
        ValueError: If it is empty, longer than 250 characters, uses characters other than
            letters, digits, ``_ - . / : space``, or is not a normalised path (``a//b``, ``../a``).
    """
    if not isinstance(key, str):
        raise TypeError(f"{kind} name must be str, got {type(key).__name__} ({key!r})")
    if len(key) > MAX_KEY_LENGTH or not _MLFLOW_NAME.match(key):
        raise ValueError(
            f"{kind} name {key!r} must be 1-{MAX_KEY_LENGTH} characters of letters, digits, '_-./: '"
        )
    # MLflow may store names as files, so it rejects names that normalise to something else.
    parts = key.split("/")
    if key.startswith("/") or "" in parts or "." in parts or ".." in parts:
        raise ValueError(f"{kind} name {key!r} must not contain empty, '.' or '..' path parts")
    return key


def check_number(key: str, value: Any) -> float:
    """Convert a metric value to ``float``.

    Args:
        key: The metric's name, for the error message.
        value: A Python/numpy number, a bool (logged as 0/1) or a one-element tensor.

    Returns:
        ``float(value)``; may be NaN or infinite (the caller decides what to do with those).

    Raises:
        TypeError: If the value is a string or cannot be converted to ``float``.
    """
    if isinstance(value, (str, bytes)):
        raise TypeError(f"metric {key!r} must be a number, got {type(value).__name__} {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError) as error:
        raise TypeError(f"metric {key!r} must be a number, got {type(value).__name__}") from error


def check_step(step: Any) -> int:
    """Check a campaign round index (the MLflow metric step).

    Raises:
        TypeError: If ``step`` is not an ``int`` (``bool`` is rejected).
        ValueError: If it is negative.
    """
    if isinstance(step, bool) or not isinstance(step, int):
        raise TypeError(f"step must be int, got {type(step).__name__} ({step!r})")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return step


def check_tags(tags: Mapping[str, Any] | None) -> dict[str, str]:
    """Check run tags and render their values as strings.

    Raises:
        TypeError: If ``tags`` is not a mapping or a key is not a ``str``.
        ValueError: If a key breaks MLflow's naming rules.
    """
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise TypeError(f"tags must be a mapping, got {type(tags).__name__}")
    return {check_key("tag", key): str(value) for key, value in tags.items()}


def check_version_tag(version_tag: Any) -> str:
    """Check a model version tag (``v3``, ``round-007``), which names the folder ``models/<tag>``.

    Raises:
        TypeError: If it is not a ``str``.
        ValueError: If it is not 1-100 characters of letters, digits, ``_ . -`` starting alphanumeric.
    """
    if not isinstance(version_tag, str):
        raise TypeError(f"version_tag must be str, got {type(version_tag).__name__}")
    if not _VERSION_TAG.match(version_tag):
        raise ValueError(
            f"version_tag {version_tag!r} must be 1-100 characters of [A-Za-z0-9_.-], starting alphanumeric"
        )
    return version_tag


def check_alias(alias: Any) -> str:
    """Check a registered-model alias such as ``champion``.

    Raises:
        TypeError: If it is not a ``str``.
        ValueError: If it is not 1-255 of ``[A-Za-z0-9_-]`` or is reserved (``latest``, ``v3``).
    """
    if not isinstance(alias, str):
        raise TypeError(f"alias must be str, got {type(alias).__name__}")
    if not _ALIAS.match(alias):
        raise ValueError(f"alias {alias!r} must be [A-Za-z0-9_-], and not 'latest' or 'v<digits>'")
    return alias


def check_safetensors(weights: Any) -> bytes:
    """Check that ``weights`` is a serialised safetensors blob (header only; tensors are not parsed).

    Args:
        weights: Output of ``safetensors.torch.save(state_dict)``: an 8-byte little-endian header
            length, a JSON header, then the tensor bytes.

    Returns:
        The blob as ``bytes``.

    Raises:
        TypeError: If ``weights`` is not bytes-like.
        ValueError: If the header length or JSON header is malformed.
    """
    if isinstance(weights, (bytearray, memoryview)):
        weights = bytes(weights)
    if not isinstance(weights, bytes):
        raise TypeError(f"weights must be safetensors bytes, got {type(weights).__name__}")
    if len(weights) < _SAFETENSORS_PREFIX_BYTES:
        raise ValueError(f"weights is not a safetensors blob: only {len(weights)} bytes")
    (header_length,) = struct.unpack("<Q", weights[:_SAFETENSORS_PREFIX_BYTES])
    header_end = _SAFETENSORS_PREFIX_BYTES + header_length
    if header_end > len(weights):
        raise ValueError(
            f"weights is not a safetensors blob: header of {header_length} bytes overruns the data"
        )
    try:
        header = json.loads(weights[_SAFETENSORS_PREFIX_BYTES:header_end])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError("weights is not a safetensors blob: header is not JSON") from error
    if not isinstance(header, dict):
        raise ValueError("weights is not a safetensors blob: header is not a JSON object")
    return weights

