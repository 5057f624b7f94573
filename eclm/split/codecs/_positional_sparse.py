"""Shared layout of the top-k style codecs: a 1-bit position map plus the kept values."""

from __future__ import annotations

import torch

from eclm.split.codecs._bitpack import pack_codes, unpack_codes
from eclm.split.codecs.base import EncodedActivation


def encode_selected(
    codec: str, rows: torch.Tensor, selected: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype
) -> EncodedActivation:
    """Send the values at ``selected`` positions in positional order plus a 1-bit map.

    Args:
        codec: codec name to stamp on the payload.
        rows: ``(R, d)`` float32 values.
        selected: ``(R, k)`` column indices kept in each row (distinct within a row).
        shape: original tensor shape.
        dtype: original tensor dtype.

    Returns:
        Payload of exactly ``R * (32 * k + d)`` bits (plus byte padding of the map).
    """
    mask = torch.zeros_like(rows, dtype=torch.bool)
    mask.scatter_(1, selected, True)
    # Boolean indexing walks rows in row-major order: the decoder pops values the same way.
    values = rows[mask]
    return EncodedActivation(
        codec=codec,
        shape=shape,
        dtype=dtype,
        size_bits=32 * values.numel() + rows.numel(),
        payload={"mask": pack_codes(mask, 1), "values": values.clone()},
    )


def decode_selected(encoded: EncodedActivation, num_rows: int, row_size: int) -> torch.Tensor:
    """Scatter the kept values back; every other element decodes to zero.

    Raises:
        ValueError: if the map and the number of values disagree.
    """
    mask = (
        unpack_codes(encoded.payload["mask"], 1, num_rows * row_size)
        .to(torch.bool)
        .reshape(num_rows, row_size)
    )
    values = encoded.payload["values"]
    if int(mask.sum()) != values.numel():
        raise ValueError(f"position map marks {int(mask.sum())} values but payload holds {values.numel()}")
    out = torch.zeros(num_rows, row_size, dtype=torch.float32)
    out[mask] = values
    return out
