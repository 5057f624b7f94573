"""Per-block cost profile of a chain model, the input to cut-layer planning.

A model is viewed as a chain of ``L`` blocks. A *cut* ``c`` in ``1..L`` means the device runs
blocks ``[0, c)`` and the server runs blocks ``[c, L)``; the tensor crossing the link is the
output of block ``c - 1`` (``activation_bytes[c]``). ``c = L`` is allowed: the device then runs
the whole chain and the server only computes the loss on the received outputs. ``c = 0`` (the
server does everything) is not a split and is not offered, but ``activation_bytes[0]`` (the input
size) is kept so that the profile describes every boundary of the chain.

All quantities are *per sample*; multiply by the batch size for a step. The one exception is
``call_flops``: what running a block once costs whatever the batch (kernel launches, Python and
autograd bookkeeping), which makes small batches and many separate calls (a server running one
pass per cut group) dearer than their FLOPs say.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["BlockCosts"]


def _as_tuple(name: str, values: Sequence[float], length: int) -> tuple[float, ...]:
    """Validate a per-block cost vector and freeze it.

    Raises:
        ValueError: if the length is wrong or a value is negative / not finite.
    """
    out = tuple(float(v) for v in values)
    if len(out) != length:
        raise ValueError(f"BlockCosts.{name} must have {length} entries, got {len(out)}")
    for i, v in enumerate(out):
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"BlockCosts.{name}[{i}] must be finite and >= 0, got {v}")
    return out


@dataclass(frozen=True)
class BlockCosts:
    """Measured or estimated costs of each block of a chain model.

    Attributes:
        forward_flops: ``L`` forward FLOPs per sample of each block.
        activation_bytes: ``L + 1`` bytes per sample of the tensor at each boundary;
            entry ``c`` is the input of block ``c`` (entry 0 is the model input, entry ``L``
            the model output).
        param_bytes: ``L`` bytes of *training state* of each block (weights, and, if the
            caller wants them counted, gradients and optimiser buffers).
        train_activation_bytes: ``L`` bytes per sample each block keeps alive for the
            backward pass.
        backward_factor: backward FLOPs as a multiple of forward FLOPs (2.0 is the usual
            estimate, so a training step costs 3x the forward pass).
        state_bytes: ``L`` bytes of each block's tensors as they cross the link when device
            parts are exchanged at epoch end (weights and buffers, no optimiser state); ``None``
            when unknown, and then the exchange is counted as free.
        call_flops: ``L`` fixed cost of one forward and backward call of each block, whatever the
            batch, in FLOP-equivalents (seconds measured x the speed they are expressed at; split
            between forward and backward like the per-sample cost); ``None``: calls are free.
    """

    forward_flops: tuple[float, ...]
    activation_bytes: tuple[float, ...]
    param_bytes: tuple[float, ...]
    train_activation_bytes: tuple[float, ...]
    backward_factor: float = 2.0
    state_bytes: tuple[float, ...] | None = None
    call_flops: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        num_blocks = len(tuple(self.forward_flops))
        if num_blocks < 1:
            raise ValueError("BlockCosts.forward_flops must describe at least one block")
        # Frozen dataclass: normalise lists to tuples through object.__setattr__.
        object.__setattr__(self, "forward_flops", _as_tuple("forward_flops", self.forward_flops, num_blocks))
        object.__setattr__(
            self, "activation_bytes", _as_tuple("activation_bytes", self.activation_bytes, num_blocks + 1)
        )
        object.__setattr__(self, "param_bytes", _as_tuple("param_bytes", self.param_bytes, num_blocks))
        object.__setattr__(
            self,
            "train_activation_bytes",
            _as_tuple("train_activation_bytes", self.train_activation_bytes, num_blocks),
        )
        for name in ("state_bytes", "call_flops"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _as_tuple(name, getattr(self, name), num_blocks))
        if not math.isfinite(self.backward_factor) or self.backward_factor < 0:
            raise ValueError(
                f"BlockCosts.backward_factor must be finite and >= 0, got {self.backward_factor}"
            )

    @property
    def num_blocks(self) -> int:
        """Number of blocks ``L`` in the chain."""
        return len(self.forward_flops)

    @property
    def cuts(self) -> range:
        """Valid cut indices ``1..L``."""
        return range(1, self.num_blocks + 1)

    def _check_cut(self, cut: int) -> None:
        if not isinstance(cut, int) or isinstance(cut, bool) or not 1 <= cut <= self.num_blocks:
            raise ValueError(f"cut must be an int in 1..{self.num_blocks}, got {cut!r}")

    def device_flops(self, cut: int) -> float:
        """Training FLOPs per sample on the device side (blocks ``[0, cut)``, fwd + bwd).

        Raises:
            ValueError: if ``cut`` is outside ``1..L``.
        """
        self._check_cut(cut)
        return (1.0 + self.backward_factor) * sum(self.forward_flops[:cut])

    def server_flops(self, cut: int) -> float:
        """Training FLOPs per sample on the server side (blocks ``[cut, L)``, fwd + bwd).

        Raises:
            ValueError: if ``cut`` is outside ``1..L``.
        """
        self._check_cut(cut)
        return (1.0 + self.backward_factor) * sum(self.forward_flops[cut:])

    def device_call_flops(self, cut: int) -> float:
        """Fixed cost of one training call of the device side (blocks ``[0, cut)``), fwd + bwd.

        Raises:
            ValueError: if ``cut`` is outside ``1..L``.
        """
        self._check_cut(cut)
        return 0.0 if self.call_flops is None else sum(self.call_flops[:cut])

    def server_call_flops(self, cut: int) -> float:
        """Fixed cost of one training call of the server side (blocks ``[cut, L)``), fwd + bwd.

        Raises:
            ValueError: if ``cut`` is outside ``1..L``.
        """
        self._check_cut(cut)
        return 0.0 if self.call_flops is None else sum(self.call_flops[cut:])

    def cut_bytes(self, cut: int) -> float:
        """Bytes per sample of the smashed activation crossing the link at ``cut``.

        The gradient sent back has the same size (uncompressed float tensor of the same shape).

        Raises:
            ValueError: if ``cut`` is outside ``1..L``.
        """
        self._check_cut(cut)
        return self.activation_bytes[cut]

    def exchange_bytes(self, cut: int) -> float:
        """Bytes of the device part ``[0, cut)`` sent each way at an epoch-end exchange.

        Zero when ``state_bytes`` is unknown.

        Raises:
            ValueError: if ``cut`` is outside ``1..L``.
        """
        self._check_cut(cut)
        return 0.0 if self.state_bytes is None else sum(self.state_bytes[:cut])

    def device_memory(self, cut: int, batch: int) -> float:
        """Peak training memory in bytes the device needs for ``cut`` at ``batch`` samples.

        Model: training state of the device blocks plus ``batch`` times their saved activations.

        Raises:
            ValueError: if ``cut`` is outside ``1..L`` or ``batch < 1``.
        """
        self._check_cut(cut)
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        return sum(self.param_bytes[:cut]) + batch * sum(self.train_activation_bytes[:cut])
