"""Lossless compression of exchanged payloads: byte-plane shuffle per tensor, then DEFLATE.

A payload (:func:`~eclm.modules.exchange.pack_state`) is safetensors bytes: a JSON header and the
tensors' raw bytes. Weights and quantised deltas compress poorly as they are: the bytes of one
element differ in kind (a float16's sign and exponent byte repeats a few values, its mantissa
byte is noise), and DEFLATE sees them interleaved. Shuffling each tensor into byte planes (every
element's first byte, then every second byte, ...; the HDF5/Blosc "shuffle" filter) puts the
predictable planes together before DEFLATE (zlib). Nothing is lost: the receiver inflates,
un-shuffles and gets the same safetensors payload back (its header's entries sorted, every tensor
byte for byte), so every accuracy figure is unchanged and only the bytes on the wire shrink
(measured in docs/method.md, "Lossless wire compression").

Envelope: ``MAGIC`` (8 bytes), the inflated length (u64, little-endian), the zlib stream. Read as
a safetensors length prefix the magic would declare a header of ~5.8e18 bytes, so a compressed
payload can never be mistaken for a plain one (and :func:`inflate_payload` passes plain payloads
through). Inflating is bounded: a declared length above :data:`MAX_INFLATED_BYTES` is refused
before any work, DEFLATE stops at the declared length, and a stream whose length or end differs
from the declaration is refused - a small upload cannot make the cloud allocate more than it
declared (a "zip bomb"). No code is executed: the result is parsed by safetensors as before.
"""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np

from eclm.modules.errors import MalformedPayloadError

MAGIC = b"ECLMZ01\n"
#: Largest inflated payload accepted (bytes); far above any sub-model this platform ships.
MAX_INFLATED_BYTES = 1 << 31
_WIDTH = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2}
_LEVEL = 6


def is_compressed(data: bytes) -> bool:
    """Whether ``data`` is a compressed payload envelope."""
    return bytes(data[: len(MAGIC)]) == MAGIC


def deflate_payload(data: bytes, level: int = _LEVEL) -> bytes:
    """Compress safetensors bytes losslessly (module docstring).

    Raises:
        MalformedPayloadError: If ``data`` is not a safetensors payload.
    """
    data = _canonical(data)
    head, regions = _layout(data)
    body = np.frombuffer(data, dtype=np.uint8, offset=head).copy()
    for begin, end, width in regions:
        body[begin:end] = body[begin:end].reshape(-1, width).T.reshape(-1)
    stream = zlib.compress(bytes(data[:head]) + body.tobytes(), level)
    return MAGIC + struct.pack("<Q", len(data)) + stream


def _canonical(data: bytes) -> bytes:
    """``data`` with its header's entries and metadata keys sorted (safetensors writes both in hash
    order, which would make the compressed size of one payload vary from run to run)."""
    head, _ = _layout(data)
    header = json.loads(bytes(data[8:head]))
    meta = header.pop("__metadata__", None)
    header = dict(sorted(header.items()))
    if isinstance(meta, dict):
        header = {"__metadata__": dict(sorted(meta.items()))} | header
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # safetensors aligns the data to 8 bytes
    return struct.pack("<Q", len(text)) + text + bytes(data[head:])


def inflate_payload(data: bytes) -> bytes:
    """The safetensors bytes of a payload: inflated if compressed, else ``data`` unchanged.

    Raises:
        MalformedPayloadError: If the envelope is truncated, declares more than
            :data:`MAX_INFLATED_BYTES`, its stream is corrupt or does not inflate to exactly the
            declared length, or the inflated bytes are not a safetensors payload.
    """
    if not is_compressed(data):
        return data
    if len(data) < len(MAGIC) + 8:
        raise MalformedPayloadError("compressed payload shorter than its envelope")
    (size,) = struct.unpack("<Q", data[len(MAGIC) : len(MAGIC) + 8])
    if size > MAX_INFLATED_BYTES:
        raise MalformedPayloadError(
            f"compressed payload declares {size} bytes, above the {MAX_INFLATED_BYTES} limit")
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(bytes(data[len(MAGIC) + 8 :]), size + 1)
    except zlib.error as err:
        raise MalformedPayloadError(f"compressed payload is corrupt: {err}") from err
    if len(raw) != size or not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
        raise MalformedPayloadError(f"compressed payload does not inflate to its declared {size} bytes")
    head, regions = _layout(raw)
    body = np.frombuffer(raw, dtype=np.uint8, offset=head).copy()
    for begin, end, width in regions:
        body[begin:end] = body[begin:end].reshape(width, -1).T.reshape(-1)
    return raw[:head] + body.tobytes()


def _layout(data: bytes) -> tuple[int, list[tuple[int, int, int]]]:
    """``(bytes before the tensor data, [(begin, end, element width)] of multi-byte tensors)``.

    Raises:
        MalformedPayloadError: If the header is unreadable or a tensor's bytes fall outside the
            data or do not divide into whole elements.
    """
    if len(data) < 8:
        raise MalformedPayloadError("payload shorter than the safetensors length prefix")
    (n,) = struct.unpack("<Q", bytes(data[:8]))
    if n > len(data) - 8:
        raise MalformedPayloadError("safetensors header length exceeds payload size")
    try:
        header = json.loads(bytes(data[8 : 8 + n]))
        entries = [(v["dtype"], v["data_offsets"]) for k, v in header.items() if k != "__metadata__"]
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise MalformedPayloadError(f"safetensors header is unreadable: {err}") from err
    size, regions = len(data) - 8 - n, []
    for dtype, offsets in entries:
        width = _WIDTH.get(dtype, 1)
        try:
            begin, end = (int(o) for o in offsets)
        except (TypeError, ValueError) as err:
            raise MalformedPayloadError(f"safetensors offsets are invalid: {offsets!r}") from err
        if not 0 <= begin <= end <= size or (end - begin) % width:
            raise MalformedPayloadError(f"tensor bytes {offsets!r} do not fit the payload's {size} data bytes")
        if width > 1 and end > begin:
            regions.append((begin, end, width))
    return 8 + n, regions
