"""The device gateway's wire format: JSON plus raw byte blobs, validated by type, never unpickled.

A call and its reply are one *frame*: an 8-byte little-endian header length, a UTF-8 JSON header
``{"value": ..., "blobs": [n0, n1, ...]}``, then the blobs' bytes back to back. Inside ``value``
every ``bytes`` (weights as safetensors, the selector) is replaced by ``{"$blob": i}``; everything
else is plain JSON (numbers finite). Decoding puts the blobs back and validates the value against
the type the device protocol declares for that method (:data:`CALLS`: the typed messages of
:mod:`eclm.campaign.messages`, ``extra="forbid"``, bounded values), so what a device sends either
becomes a valid message or is refused with a :class:`MalformedFrameError`. Nothing is executed:
safetensors carries tensors only, and JSON carries values only (docs/security.md).
"""

from __future__ import annotations

import json
import struct
from typing import Any

from pydantic import TypeAdapter, ValidationError

from eclm.campaign.messages import (
    DeviceMetrics,
    DeviceSummary,
    DeviceUpdate,
    DriftReport,
    InstallReport,
    Resources,
    StreamPosition,
    SubModelPackage,
    SwapReport,
)

#: Largest frame accepted by default (a sub-model of ~100M float32 parameters fits).
MAX_FRAME_BYTES = 512 * 2**20
#: Largest JSON header accepted (the values besides the blobs are small).
MAX_HEADER_BYTES = 16 * 2**20

#: The device protocol over the gateway: method -> (argument types, return type). Local adaptation
#: only; split learning keeps the device inside the cluster (docs/security.md).
CALLS: dict[str, tuple[tuple[Any, ...], Any]] = {
    "advance": ((int,), StreamPosition),
    "drift": ((), DriftReport),
    "profile": ((), Resources),
    "set_resources": ((Resources,), Resources),
    "summary": ((bytes | None,), DeviceSummary),
    "install": ((SubModelPackage, dict | None), InstallReport),
    "adapt": ((), DeviceUpdate),
    "evaluate": ((), DeviceMetrics),
    "shrink": ((Resources | None,), SwapReport | None),
    "snapshot_model": ((), bytes | None),
    "echo_size": ((bytes,), int),
}

_ADAPTERS: dict[Any, TypeAdapter] = {}


class MalformedFrameError(ValueError):
    """A frame that does not decode, or whose value is not of the declared type."""


def encode_frame(value: Any) -> bytes:
    """One frame holding ``value`` (messages, ``bytes``, numbers, strings, lists, mappings, ``None``).

    Raises:
        TypeError: If ``value`` holds anything else (nothing is pickled).
        ValueError: If a number is not finite.
    """
    blobs: list[bytes] = []
    header = json.dumps({"value": _plain(value, blobs), "blobs": [len(b) for b in blobs]},
                        allow_nan=False, separators=(",", ":")).encode()
    return struct.pack("<Q", len(header)) + header + b"".join(blobs)


def decode_frame(data: bytes, kind: Any, *, max_bytes: int = MAX_FRAME_BYTES) -> Any:
    """The value of a frame, validated as ``kind`` (a message class or a type such as ``bytes | None``).

    Raises:
        MalformedFrameError: If the frame is truncated, oversized, not JSON, refers to blobs it
            does not carry, or its value is not a valid ``kind``.
    """
    if len(data) > max_bytes:
        raise MalformedFrameError(f"frame of {len(data)} bytes exceeds the limit {max_bytes}")
    if len(data) < 8:
        raise MalformedFrameError("frame shorter than its length prefix")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(MAX_HEADER_BYTES, len(data) - 8):
        raise MalformedFrameError(f"header length {n} beyond the frame ({len(data) - 8} bytes) or the limit")
    try:
        header = json.loads(data[8:8 + n])
        sizes = header["blobs"]
        value = header["value"]
    except (ValueError, KeyError, TypeError) as err:
        raise MalformedFrameError(f"header is not a frame header: {err}") from None
    if not isinstance(sizes, list) or not all(isinstance(s, int) and s >= 0 for s in sizes):
        raise MalformedFrameError("blob sizes must be a list of non-negative integers")
    if 8 + n + sum(sizes) != len(data):
        raise MalformedFrameError(f"blobs of {sum(sizes)} bytes announced, {len(data) - 8 - n} present")
    blobs, at = [], 8 + n
    for s in sizes:
        blobs.append(bytes(data[at:at + s]))
        at += s
    try:
        return _adapter(kind).validate_python(_with_blobs(value, blobs))
    except ValidationError as err:
        raise MalformedFrameError(f"not a valid {getattr(kind, '__name__', kind)}: {err.error_count()} error(s); "
                                  f"first: {err.errors()[0]['msg']} at {err.errors()[0]['loc']}") from None


def encode_call(method: str, args: tuple) -> bytes:
    """The frame of a call to ``method`` of the device protocol.

    Raises:
        ValueError: If ``method`` is not in :data:`CALLS` or the argument count is wrong.
    """
    arg_types, _ = _signature(method)
    if len(args) > len(arg_types):
        raise ValueError(f"{method} takes at most {len(arg_types)} argument(s), got {len(args)}")
    return encode_frame(list(args))


def decode_call(method: str, data: bytes, *, max_bytes: int = MAX_FRAME_BYTES) -> list:
    """The validated arguments of a call frame for ``method`` (missing trailing ones omitted).

    Raises:
        MalformedFrameError: If the frame or an argument is invalid, or there are too many.
        ValueError: If ``method`` is not in :data:`CALLS`.
    """
    arg_types, _ = _signature(method)
    raw = decode_frame(data, list, max_bytes=max_bytes)
    if len(raw) > len(arg_types):
        raise MalformedFrameError(f"{method} takes at most {len(arg_types)} argument(s), got {len(raw)}")
    try:
        return [_adapter(t).validate_python(v) for t, v in zip(arg_types, raw, strict=False)]
    except ValidationError as err:
        raise MalformedFrameError(f"invalid argument for {method}: {err.errors()[0]['msg']}") from None


def return_type(method: str) -> Any:
    """The type a reply to ``method`` must have."""
    return _signature(method)[1]


def _signature(method: str) -> tuple[tuple[Any, ...], Any]:
    try:
        return CALLS[method]
    except KeyError:
        raise ValueError(f"{method!r} is not a gateway call; known: {sorted(CALLS)}") from None


def _adapter(kind: Any) -> TypeAdapter:
    if kind not in _ADAPTERS:
        _ADAPTERS[kind] = TypeAdapter(kind)
    return _ADAPTERS[kind]


def _plain(value: Any, blobs: list[bytes]) -> Any:
    """``value`` as JSON-able data, ``bytes`` moved to ``blobs``."""
    if isinstance(value, bytes | bytearray | memoryview):
        blobs.append(bytes(value))
        return {"$blob": len(blobs) - 1}
    if hasattr(value, "model_dump"):  # a typed message (its fields only, in Python form)
        return _plain(value.model_dump(mode="python"), blobs)
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("mapping keys must be strings")
        return {k: _plain(v, blobs) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, blobs) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"{type(value).__name__} cannot travel over the gateway (plain data and bytes only)")


def _with_blobs(value: Any, blobs: list[bytes]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$blob"}:
            i = value["$blob"]
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(blobs):
                raise MalformedFrameError(f"reference to blob {i!r}, the frame carries {len(blobs)}")
            return blobs[i]
        return {k: _with_blobs(v, blobs) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_blobs(v, blobs) for v in value]
    return value


__all__ = ["CALLS", "MAX_FRAME_BYTES", "MalformedFrameError", "decode_call", "decode_frame", "encode_call",
           "encode_frame", "return_type"]
