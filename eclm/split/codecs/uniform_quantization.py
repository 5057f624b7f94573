"""Uniform b-bit quantisation between the tensor's minimum and maximum."""

from __future__ import annotations

import torch

from eclm.split.codecs._bitpack import pack_codes, unpack_codes
from eclm.split.codecs.base import EncodedActivation, SmashedCodec, as_rows, check_bits

__all__ = ["UniformQuantizationCodec"]


class UniformQuantizationCodec(SmashedCodec):
    """Per-tensor uniform quantisation to ``2**bits`` levels on ``[min, max]``.

    Layout: min and max as float32, then ``bits`` bits per element (bit-packed), so
    ``size_bits = 64 + bits * d_total``. Codes are ``round((x - min) / step)`` with
    ``step = (max - min) / (2**bits - 1)``; a constant tensor decodes exactly.

    Args:
        bits: code width, 1..16.

    Raises:
        ValueError: if ``bits`` is out of range.
    """

    name = "uniform_quantization"

    def __init__(self, bits: int) -> None:
        self.bits = check_bits(bits)

    def encode(self, x: torch.Tensor) -> EncodedActivation:
        """Encode ``x`` (see :meth:`SmashedCodec.encode`)."""
        rows = as_rows(x)
        low, high = rows.min(), rows.max()
        levels = 2**self.bits - 1
        span = float(high - low)
        codes = torch.zeros_like(rows, dtype=torch.int64)
        if span > 0:
            codes = torch.round((rows - low) * (levels / span)).clamp_(0, levels).to(torch.int64)
        return EncodedActivation(
            codec=self.name,
            shape=tuple(x.shape),
            dtype=x.dtype,
            size_bits=64 + self.bits * rows.numel(),
            payload={"range": torch.stack([low, high]), "codes": pack_codes(codes, self.bits)},
        )

    def _decode_rows(self, encoded: EncodedActivation, num_rows: int, row_size: int) -> torch.Tensor:
        low, high = encoded.payload["range"].tolist()
        codes = unpack_codes(encoded.payload["codes"], self.bits, num_rows * row_size)
        step = (high - low) / (2**self.bits - 1)
        return (low + codes.to(torch.float32) * step).reshape(num_rows, row_size)

    def nominal_bits_per_element(self) -> float:
        """``bits`` (the 64-bit range header is negligible for real tensors)."""
        return float(self.bits)
