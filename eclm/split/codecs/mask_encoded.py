"""Mask-Encoded Sparsification (Zhou et al., arXiv 2408.13787); docs/split_learning.md."""

from __future__ import annotations

import torch

from eclm.split.codecs._bitpack import pack_codes, unpack_codes
from eclm.split.codecs.base import (
    EncodedActivation,
    SmashedCodec,
    as_rows,
    check_bits,
    check_ratio,
    keep_count,
)

__all__ = ["MaskEncodedSparsification"]


class MaskEncodedSparsification(SmashedCodec):
    """Top-k values plus a b-bit mask that also coarsely quantises the filtered-out residual.

    Per sample (row of ``d`` elements) keep the ``k = max(1, floor((1 - ratio) * d))`` values
    of largest magnitude, sent as float32 in positional order *without indices*. Every element
    gets a ``bits``-bit code: kept positions get the all-ones code ``2**bits - 1``; any other
    element ``x`` gets ``round(|x| * (2**bits - 1) / top_min)`` clamped to ``2**bits - 2``,
    where ``top_min`` is the smallest kept magnitude of its row. Decoding walks the mask:
    all-ones pops the next kept value, code ``m`` decodes to ``m * top_min / (2**bits - 1)``.
    ``top_min`` is not transmitted: the decoder recomputes it from the row's kept values.
    With ``bits = 1`` this is exactly top-k with a 1-bit position map.

    Signed inputs (eclm's choice): codes quantise the magnitude, and one sign bit is sent per
    *residual* element (kept values carry their own sign in float32). Sizes:

        unsigned: ``size_bits = d_total * bits + 32 * k_total``
        signed:   ``size_bits = d_total * bits + 32 * k_total + (d_total - k_total)``

    so ReLU activations pay the paper's ``d * b + 32 * k`` (``ratio = 0.99, bits = 2`` gives
    2.32 bits/element).

    Args:
        ratio: fraction of values not sent as floats, ``r`` in ``[0, 1)``.
        bits: code width ``b``, 1..16.
        signed: ``True`` always sends sign bits, ``False`` never does (negative inputs are
            rejected), ``None`` decides per tensor (sign bits only if it has a negative
            value; recorded in the header).

    Raises:
        ValueError: if ``ratio`` or ``bits`` are out of range.
    """

    name = "mask_encoded"

    def __init__(self, ratio: float, bits: int, signed: bool | None = None) -> None:
        self.ratio = check_ratio(ratio)
        self.bits = check_bits(bits)
        if signed not in (None, True, False):
            raise ValueError(f"signed must be True, False or None, got {signed!r}")
        self.signed = signed

    @property
    def _top_code(self) -> int:
        return 2**self.bits - 1

    def encode(self, x: torch.Tensor) -> EncodedActivation:
        """Encode ``x`` (see :meth:`SmashedCodec.encode`).

        Raises:
            ValueError: additionally, if ``signed=False`` and ``x`` has negative values.
        """
        rows = as_rows(x)
        has_negative = bool((rows < 0).any())
        if self.signed is False and has_negative:
            raise ValueError(
                "MaskEncodedSparsification(signed=False) got negative values; use signed=None or True"
            )
        signed = has_negative if self.signed is None else self.signed
        num_rows, row_size = rows.shape
        k = keep_count(self.ratio, row_size)
        magnitudes = rows.abs()
        top = torch.topk(magnitudes, k, dim=1)
        mask = torch.zeros_like(rows, dtype=torch.bool)
        mask.scatter_(1, top.indices, True)
        top_min = top.values.min(dim=1).values  # (R,) smallest kept magnitude per row
        # top_min = 0 only when the row has fewer than k non-zeros; its residual is all zero.
        scale = torch.where(top_min > 0, self._top_code / top_min, torch.zeros_like(top_min))
        codes = torch.round(magnitudes * scale[:, None]).clamp_(max=self._top_code - 1).to(torch.int64)
        codes[mask] = self._top_code
        payload = {"codes": pack_codes(codes, self.bits), "values": rows[mask].clone()}
        size_bits = num_rows * row_size * self.bits + 32 * num_rows * k
        if signed:
            payload["signs"] = pack_codes(rows[~mask] < 0, 1)
            size_bits += num_rows * (row_size - k)
        return EncodedActivation(
            codec=self.name,
            shape=tuple(x.shape),
            dtype=x.dtype,
            size_bits=size_bits,
            payload=payload,
            header={"signed": signed},
        )

    def _decode_rows(self, encoded: EncodedActivation, num_rows: int, row_size: int) -> torch.Tensor:
        codes = unpack_codes(encoded.payload["codes"], self.bits, num_rows * row_size).reshape(
            num_rows, row_size
        )
        mask = codes == self._top_code
        values = encoded.payload["values"]
        kept_per_row = mask.sum(dim=1)
        k = keep_count(self.ratio, row_size)
        if not bool((kept_per_row == k).all()) or values.numel() != num_rows * k:
            raise ValueError(f"mask marks {kept_per_row.tolist()} values per row, expected {k} per row")
        # Every row keeps exactly k values, so the positional stream reshapes to (R, k).
        top_min = values.reshape(num_rows, k).abs().min(dim=1).values
        out = codes.to(torch.float32) * (top_min / self._top_code)[:, None]
        if encoded.header.get("signed", False):
            negative = unpack_codes(encoded.payload["signs"], 1, num_rows * (row_size - k)).to(torch.bool)
            residual = out[~mask]
            out[~mask] = torch.where(negative, -residual, residual)
        out[mask] = values
        return out

    def nominal_bits_per_element(self) -> float:
        """``bits + 32 * (1 - ratio)`` (+ ``ratio`` sign bits if ``signed=True``)."""
        sign_bits = self.ratio if self.signed else 0.0
        return self.bits + 32.0 * (1.0 - self.ratio) + sign_bits
