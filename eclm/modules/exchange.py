"""Weight exchange: sub-model state travels as safetensors bytes with its spec in the header.

No pickle anywhere: safetensors holds raw tensors and a JSON header, so loading an update can
never execute code. The spec and any small JSON metadata ride in the ``__metadata__`` header.
"""

from __future__ import annotations

import json
import struct

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from eclm.modules.errors import MalformedPayloadError
from eclm.modules.spec import SubModelSpec
from eclm.modules.wire_compression import deflate_payload, inflate_payload

_SPEC_KEY = "eclm.spec"
_META_KEY = "eclm.meta"


def pack_state(state: dict[str, Tensor], spec: SubModelSpec | None = None, meta: dict | None = None,
               compression: str = "none") -> bytes:
    """Serialise a state dict (plus spec and JSON metadata) to safetensors bytes.

    Args:
        state: Tensors to ship.
        spec: Sub-model spec carried in the header.
        meta: JSON-able metadata carried in the header.
        compression: ``"none"`` (plain safetensors) or ``"deflate"`` (lossless,
            :mod:`eclm.modules.wire_compression`; :func:`unpack_state` reads either).

    Raises:
        ValueError: If ``compression`` is unknown.
    """
    if compression not in ("none", "deflate"):
        raise ValueError(f"compression must be 'none' or 'deflate', got {compression!r}")
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    header: dict[str, str] = {}
    if spec is not None:
        header[_SPEC_KEY] = spec.to_json()
    if meta is not None:
        header[_META_KEY] = json.dumps(meta)
    data = st_save(tensors, metadata=header)
    return deflate_payload(data) if compression == "deflate" else data


def read_header(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` strings of a payload (parsed without loading tensors; a compressed
    payload is inflated first)."""
    data = inflate_payload(data)
    if len(data) < 8:
        raise MalformedPayloadError("payload shorter than the safetensors length prefix")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise MalformedPayloadError("safetensors header length exceeds payload size")
    try:
        header = json.loads(data[8 : 8 + n])
    except ValueError as err:
        raise MalformedPayloadError(f"safetensors header is not JSON: {err}") from err
    return header.get("__metadata__", {}) or {}


def unpack_state(data: bytes) -> tuple[dict[str, Tensor], SubModelSpec | None, dict]:
    """Inverse of :func:`pack_state`: ``(state, spec or None, meta)``.

    Raises:
        MalformedPayloadError: If the bytes are not a readable safetensors payload or the spec
            header is invalid.
    """
    data = inflate_payload(data)
    meta_header = read_header(data)
    try:
        state = st_load(bytes(data))
    except Exception as err:  # safetensors raises its own error types
        raise MalformedPayloadError(f"cannot decode safetensors payload: {err}") from err
    spec = None
    if _SPEC_KEY in meta_header:
        try:
            spec = SubModelSpec.from_json(meta_header[_SPEC_KEY])
        except ValueError as err:
            raise MalformedPayloadError(f"invalid sub-model spec in payload: {err}") from err
    try:
        meta = json.loads(meta_header[_META_KEY]) if _META_KEY in meta_header else {}
    except ValueError as err:
        raise MalformedPayloadError(f"payload metadata is not JSON: {err}") from err
    if not isinstance(meta, dict):
        raise MalformedPayloadError(f"payload metadata must be a JSON object, got {type(meta).__name__}")
    return state, spec, meta


def payload_size(state: dict[str, Tensor]) -> int:
    """Raw tensor bytes of a state dict (what shipping it costs, header excluded)."""
    return sum(t.numel() * t.element_size() for t in state.values())


def load_into(module: torch.nn.Module, state: dict[str, Tensor]) -> None:
    """Load ``state`` strictly into ``module`` with a clear error on any mismatch."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise MalformedPayloadError(f"payload does not match the sub-model: {err}") from err
