"""Codecs for smashed activations, the client -> server traffic of split learning.

A codec turns a float tensor into an :class:`EncodedActivation` (the payload that would cross
the link, with its exact size in bits) and back. Training uses the reconstruction in the
forward pass and passes the server's gradient back to the client unchanged (straight-through),
as in Mask-Encoded Sparsification; gradients travel uncompressed.

Layout conventions shared by all codecs:
    * Inputs are reshaped to rows ``(R, d)``: the first axis is the batch (one row per sample);
      a 0-d or 1-d tensor is one row. Sparsifying codecs select per row (per sample), so every
      sample keeps the same number of values and the decoder knows that number from the shape.
    * Values are sent as float32 (32 bits); encoded tensors live on the CPU.
    * ``size_bits`` counts the payload exactly. The header (codec name, shape, dtype, and the
      flags in ``header``) is session metadata of constant size and is not counted.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

__all__ = ["EncodedActivation", "SmashedCodec", "straight_through"]


@dataclass(frozen=True)
class EncodedActivation:
    """What one smashed-activation tensor costs on the wire.

    Attributes:
        codec: name of the codec that produced it (decoders check it).
        shape: original tensor shape.
        dtype: original tensor dtype (restored on decode).
        size_bits: exact payload size in bits per the codec's bit layout.
        payload: named CPU tensors (uint8 bit-packed codes, float32 values); plain arrays, no
            pickled objects, so any transport can carry them.
        header: small constant-size flags the decoder needs (e.g. ``signed``).
    """

    codec: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    size_bits: int
    payload: dict[str, torch.Tensor]
    header: dict[str, int | bool] = field(default_factory=dict)

    @property
    def size_bytes(self) -> float:
        """Payload size in bytes (``size_bits / 8``, fractional when not byte aligned)."""
        return self.size_bits / 8

    @property
    def numel(self) -> int:
        """Number of elements of the original tensor."""
        return math.prod(self.shape)

    @property
    def payload_bits(self) -> int:
        """Bits actually held by the payload tensors (>= ``size_bits``; byte padding only)."""
        return sum(t.numel() * t.element_size() * 8 for t in self.payload.values())


class _StraightThrough(torch.autograd.Function):
    """Forward returns the reconstruction; backward hands the gradient to the input as is."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, x_hat: torch.Tensor
    ) -> torch.Tensor:
        del ctx, x
        return x_hat.clone()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        del ctx
        return grad, None


def straight_through(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Use ``x_hat`` in the forward pass with the identity gradient with respect to ``x``.

    Args:
        x: tensor in the autograd graph, any shape.
        x_hat: its reconstruction, same shape (no gradient flows into it).

    Returns:
        A tensor equal to ``x_hat`` whose gradient flows to ``x`` unchanged.

    Raises:
        ValueError: if the shapes differ.
    """
    if x.shape != x_hat.shape:
        raise ValueError(
            f"straight_through needs equal shapes, got {tuple(x.shape)} and {tuple(x_hat.shape)}"
        )
    return _StraightThrough.apply(x, x_hat.detach())


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """Validate an activation and view it as float32 CPU rows ``(R, d)``, one per sample.

    Raises:
        TypeError: if ``x`` is not a floating-point tensor.
        ValueError: if ``x`` is empty or holds non-finite values.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(
            f"codecs encode floating-point torch tensors, got {type(x).__name__}"
            f"{'' if not isinstance(x, torch.Tensor) else ' of dtype ' + str(x.dtype)}"
        )
    if x.numel() == 0:
        raise ValueError(f"cannot encode an empty tensor of shape {tuple(x.shape)}")
    rows = x.detach().to(device="cpu", dtype=torch.float32)
    rows = rows.reshape(x.shape[0], -1) if x.dim() >= 2 else rows.reshape(1, -1)
    if not torch.isfinite(rows).all():
        raise ValueError("cannot encode a tensor with NaN or infinite values")
    return rows


def keep_count(ratio: float, row_size: int) -> int:
    """Kept values per row, ``max(1, floor((1 - ratio) * d))``.

    The floor gets a 1e-9 nudge so that float error in ``1 - ratio`` (``0.1 * 100 =
    9.999999999999998``) does not lose a value; at least one value is kept so every row has a
    well-defined smallest kept magnitude.
    """
    return max(1, min(row_size, math.floor((1.0 - ratio) * row_size + 1e-9)))


def check_ratio(ratio: float) -> float:
    """Validate a sparsity ratio ``r`` in ``[0, 1)`` (fraction of values dropped).

    Raises:
        ValueError: if out of range.
    """
    if not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) < 1.0:
        raise ValueError(f"ratio must be a float in [0, 1), got {ratio!r}")
    return float(ratio)


def check_bits(bits: int, low: int = 1, high: int = 16) -> int:
    """Validate a code width in bits.

    Raises:
        ValueError: if not an int in ``[low, high]``.
    """
    if not isinstance(bits, int) or isinstance(bits, bool) or not low <= bits <= high:
        raise ValueError(f"bits must be an int in [{low}, {high}], got {bits!r}")
    return bits


class SmashedCodec(ABC):
    """Strategy base class for compressing smashed activations."""

    #: Identifier stored in every :class:`EncodedActivation`.
    name: str = "base"

    @abstractmethod
    def encode(self, x: torch.Tensor) -> EncodedActivation:
        """Encode an activation tensor ``(batch, ...)``.

        Raises:
            TypeError: if ``x`` is not a floating-point tensor.
            ValueError: if ``x`` is empty or not finite.
        """

    @abstractmethod
    def _decode_rows(self, encoded: EncodedActivation, num_rows: int, row_size: int) -> torch.Tensor:
        """Concrete strategy: reconstruct float32 rows ``(R, d)`` from the payload."""

    @abstractmethod
    def nominal_bits_per_element(self) -> float:
        """Approximate bits per element for large rows, for planning (``32`` = uncompressed)."""

    def decode(self, encoded: EncodedActivation) -> torch.Tensor:
        """Reconstruct the tensor (CPU, original shape and dtype).

        Raises:
            ValueError: if ``encoded`` was produced by another codec.
        """
        if encoded.codec != self.name:
            raise ValueError(f"{type(self).__name__} cannot decode a payload of codec {encoded.codec!r}")
        shape = encoded.shape
        num_rows = shape[0] if len(shape) >= 2 else 1
        rows = self._decode_rows(encoded, num_rows, encoded.numel // num_rows)
        return rows.reshape(shape).to(encoded.dtype)

    def roundtrip(self, x: torch.Tensor) -> tuple[torch.Tensor, EncodedActivation]:
        """Encode and decode ``x``; the result carries a straight-through gradient.

        Returns:
            ``(x_hat, encoded)``: ``x_hat`` on ``x``'s device, same shape and dtype, and the
            payload (for traffic accounting).
        """
        encoded = self.encode(x)
        x_hat = self.decode(encoded).to(x.device)
        return straight_through(x, x_hat), encoded

    def compress(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x))`` in the forward pass, identity gradient in the backward pass."""
        return self.roundtrip(x)[0]

    def compression_ratio(self) -> float:
        """Nominal uncompressed / compressed size, for the EdgeSplit planner."""
        return 32.0 / self.nominal_bits_per_element()
