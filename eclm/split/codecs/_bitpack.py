"""Dense bit packing of small unsigned integer codes into uint8 arrays (big-endian bits)."""

from __future__ import annotations

import numpy as np
import torch


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes ``0 <= code < 2**bits`` into ``ceil(n * bits / 8)`` bytes.

    Args:
        codes: integer tensor of any shape; flattened in row-major order.
        bits: code width, 1..16.

    Returns:
        1-D uint8 tensor.
    """
    flat = codes.reshape(-1).to(torch.int64).numpy().astype(np.uint16)
    if bits == 1:
        return torch.from_numpy(np.packbits(flat.astype(np.uint8)))
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint16)
    bit_matrix = ((flat[:, None] >> shifts) & 1).astype(np.uint8)
    return torch.from_numpy(np.packbits(bit_matrix.reshape(-1)))


def unpack_codes(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`.

    Args:
        packed: 1-D uint8 tensor from :func:`pack_codes`.
        bits: code width used to pack.
        count: number of codes to read.

    Returns:
        1-D int64 tensor of ``count`` codes.

    Raises:
        ValueError: if ``packed`` holds fewer than ``count * bits`` bits.
    """
    array = packed.numpy()
    if array.size * 8 < count * bits:
        raise ValueError(f"packed payload has {array.size * 8} bits, needs {count * bits}")
    flat = np.unpackbits(array, count=count * bits).astype(np.int64)
    if bits == 1:
        return torch.from_numpy(flat)
    weights = np.left_shift(1, np.arange(bits - 1, -1, -1, dtype=np.int64))
    return torch.from_numpy(flat.reshape(count, bits) @ weights)
