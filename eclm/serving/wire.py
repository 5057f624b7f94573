"""What crosses a pipeline hop: one micro-batch's activation on the wire, and what the stages measured.

A :class:`StageMessage` is the only thing stage actors pass to each other (as a Ray object ref)
and hand back to the coordinator. It carries

* the activation, encoded by a wire **codec**: ``float32`` (as computed), ``float16`` (half the
  bytes; values beyond float16's range are clamped to it) or ``int8`` (a quarter; per-tensor
  affine quantisation, ``x ~ scale * q + offset``). The array is a numpy array rather than a
  torch tensor: Ray serialises numpy arrays out of band (no pickling of the data), which cut the
  CPU time of a hop by 25-30% on the development host (docs/serving.md, "Where capacity goes");
* ``arrive_at``, the wall time (``time.time()``, comparable across processes on one host) at
  which the emulated link delivers the message; the receiving stage waits for it before
  computing. 0 means "already there" (no emulated link);
* the timings of every stage it went through, so one object per hop carries everything the
  coordinator needs and a micro-batch costs one Ray call per stage.

Pure numpy/torch; no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from eclm.serving.config import CODECS

Codec = Literal["float32", "float16", "int8"]
_FP16_MAX = float(torch.finfo(torch.float16).max)


@dataclass
class StageMessage:
    """One micro-batch's activation between two stages (or to/from the coordinator).

    Attributes:
        batch_id: The micro-batch (the coordinator's dispatch id).
        data: The encoded activation (float32, float16 or int8 array of the activation's shape).
        codec: How ``data`` encodes the activation (one of :data:`CODECS`).
        scale: int8 only: step between codes.
        offset: int8 only: value of code 0.
        arrive_at: Wall time (s) the emulated link delivers the message; 0 = delivered.
        timings: Timing dicts of the stages the micro-batch went through, in order.
    """

    batch_id: int
    data: np.ndarray
    codec: str = "float32"
    scale: float = 1.0
    offset: float = 0.0
    arrive_at: float = 0.0
    timings: list[dict[str, Any]] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        """Bytes of the encoded activation (what the link carries)."""
        return int(self.data.nbytes)


def encode(x: Tensor, codec: str = "float32", batch_id: int = -1, timings: list[dict] | None = None,
           arrive_at: float = 0.0) -> StageMessage:
    """Encode a float activation for the wire.

    Args:
        x: The activation (any shape, floating point, on the CPU).
        codec: One of :data:`CODECS`.
        batch_id: Micro-batch id carried along.
        timings: Stage timings carried along (the list is kept, not copied).
        arrive_at: See :class:`StageMessage`.

    Returns:
        The :class:`StageMessage`.

    Raises:
        ValueError: If ``codec`` is unknown or ``x`` is not floating point.
    """
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
    if not torch.is_floating_point(x):
        raise ValueError(f"only float activations can be encoded, got {x.dtype}")
    x = x.detach().float()
    scale, offset = 1.0, 0.0
    if codec == "float32":
        data = x.contiguous().numpy()
    elif codec == "float16":
        data = x.clamp(-_FP16_MAX, _FP16_MAX).half().numpy()
    else:
        low, high = (float(v) for v in torch.aminmax(x)) if x.numel() else (0.0, 0.0)
        scale = (high - low) / 255.0 or 1.0
        offset = low + 128.0 * scale
        data = torch.round((x - offset) / scale).clamp(-128, 127).to(torch.int8).numpy()
    return StageMessage(int(batch_id), data, codec, scale, offset, float(arrive_at),
                        [] if timings is None else timings)


def decode(message: StageMessage) -> Tensor:
    """The float32 activation a message carries (a new tensor; the message is not modified).

    Raises:
        ValueError: If the codec is unknown.
    """
    if message.codec not in CODECS:
        raise ValueError(f"codec must be one of {CODECS}, got {message.codec!r}")
    # Arrays read from Ray's object store are read-only; blocks may work in place, so copy them.
    data = message.data if message.data.flags.writeable else message.data.copy()
    t = torch.from_numpy(data)
    if message.codec == "int8":
        return t.float() * message.scale + message.offset
    return t.float()
