"""Wire codecs for weight differences: a narrower float type, or int8 per output channel.

A difference (a weight delta) is small and its rows differ in scale, so it compresses well:

* ``float16`` / ``bfloat16``: a cast (half the bytes; about 5e-4 of the change lost to rounding);
* ``int8``: per output channel (first axis) ``q = round(d / s)`` with ``s = max|d_row| / 127``;
  a tensor ``K`` travels as ``K`` (int8, the same shape) and ``K#scale`` (float32, one scale per
  row): about a quarter of the float32 bytes. One-dimensional tensors (biases, norm parameters),
  where a scale per element would cost more than it saves, travel as float16.

Whatever a codec cannot represent travels exactly (float32): a difference with a non-finite
entry (so integrity checks still see it), or one that would overflow float16. :func:`encode`
also returns the rounding error of every tensor, which a sender that keeps it (error feedback)
adds to its next difference, so rounding never accumulates into a drift (Seide et al. 2014,
"1-bit SGD"; Karimireddy et al. 2019, "Error feedback fixes SignSGD"). :func:`decode` refuses
anything that is not a well-formed encoding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from eclm.modules.exchange import MalformedPayloadError

CODECS = ("float32", "float16", "bfloat16", "int8")
SCALE_SUFFIX = "#scale"
_FLOATS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_INT8_MAX = 127


def _cast(d: Tensor, dtype: torch.dtype) -> Tensor:
    """``d`` in ``dtype``, or exactly if the cast is not narrower or would overflow."""
    if dtype == d.dtype or torch.finfo(dtype).bits >= torch.finfo(d.dtype).bits:
        return d
    narrow = d.to(dtype)
    return narrow if bool(torch.isfinite(narrow).all()) else d


def _int8(d: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row symmetric int8 quantisation of ``d`` (``ndim >= 2``): ``(q, scale)``."""
    rows = d.reshape(d.shape[0], -1)
    scale = rows.abs().amax(dim=1) / _INT8_MAX
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(rows / safe[:, None]).clamp_(-_INT8_MAX, _INT8_MAX).to(torch.int8)
    return q.reshape(d.shape), scale.to(torch.float32)


def encode_one(key: str, d: Tensor, codec: str) -> dict[str, Tensor]:
    """The wire tensors of difference ``d`` under ``codec`` (see the module docstring).

    Raises:
        ValueError: For an unknown codec.
    """
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; known: {list(CODECS)}")
    d = d.detach()
    if not d.is_floating_point() or not bool(torch.isfinite(d).all()):
        return {key: d}
    if codec == "int8":
        if d.ndim >= 2 and d.numel() > 0:
            q, scale = _int8(d.float())
            return {key: q, key + SCALE_SUFFIX: scale}
        return {key: _cast(d, torch.float16)}
    return {key: _cast(d, _FLOATS[codec])}


def encode(diffs: dict[str, Tensor], codec: str) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(wire tensors, rounding error per key)`` of a dict of differences.

    The error is ``d - decode(encode(d))`` in ``d``'s own type (zero where a tensor travels exactly).
    """
    wire: dict[str, Tensor] = {}
    error: dict[str, Tensor] = {}
    for key, d in diffs.items():
        enc = encode_one(key, d, codec)
        wire |= enc
        if d.is_floating_point():
            error[key] = d.detach() - _decode_one(key, enc).to(d.dtype)
    return wire, error


def _decode_one(key: str, enc: dict[str, Tensor]) -> Tensor:
    value = enc[key]
    scale = enc.get(key + SCALE_SUFFIX)
    if value.dtype != torch.int8:
        if scale is not None:
            raise MalformedPayloadError(f"{key}: a scale accompanies a {value.dtype} tensor")
        return value
    if scale is None:
        raise MalformedPayloadError(f"{key}: int8 tensor without its {SCALE_SUFFIX} tensor")
    if value.ndim < 2 or scale.dtype != torch.float32 or tuple(scale.shape) != (value.shape[0],):
        raise MalformedPayloadError(f"{key}: int8 {tuple(value.shape)} needs one float32 scale per row, "
                                    f"got {scale.dtype} {tuple(scale.shape)}")
    if not bool(torch.isfinite(scale).all()) or bool((scale < 0).any()):
        raise MalformedPayloadError(f"{key}: scales must be finite and non-negative")
    view = [value.shape[0]] + [1] * (value.ndim - 1)
    return value.to(torch.float32) * scale.reshape(view)


def decode(wire: dict[str, Tensor]) -> dict[str, Tensor]:
    """Differences from their wire tensors (int8 dequantised to float32; casts kept as sent).

    Raises:
        MalformedPayloadError: On a scale without its tensor, an int8 tensor without its scale,
            or scales of the wrong type, shape or sign.
    """
    orphans = sorted(k for k in wire if k.endswith(SCALE_SUFFIX) and k[: -len(SCALE_SUFFIX)] not in wire)
    if orphans:
        raise MalformedPayloadError(f"scales without their tensors: {orphans[:4]}")
    return {k: _decode_one(k, wire) for k in wire if not k.endswith(SCALE_SUFFIX)}


__all__ = ["CODECS", "SCALE_SUFFIX", "decode", "encode", "encode_one"]
