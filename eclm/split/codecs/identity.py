"""No compression: every element as float32."""

from __future__ import annotations

import torch

from eclm.split.codecs.base import EncodedActivation, SmashedCodec, as_rows

__all__ = ["IdentityCodec"]


class IdentityCodec(SmashedCodec):
    """Sends the activation as float32; ``size_bits = 32 * d``. The uncompressed baseline."""

    name = "identity"

    def encode(self, x: torch.Tensor) -> EncodedActivation:
        """Encode ``x`` as a flat float32 payload (see :meth:`SmashedCodec.encode`)."""
        rows = as_rows(x)
        return EncodedActivation(
            codec=self.name,
            shape=tuple(x.shape),
            dtype=x.dtype,
            size_bits=32 * rows.numel(),
            payload={"values": rows.reshape(-1).clone()},
        )

    def _decode_rows(self, encoded: EncodedActivation, num_rows: int, row_size: int) -> torch.Tensor:
        return encoded.payload["values"].reshape(num_rows, row_size)

    def nominal_bits_per_element(self) -> float:
        """32 bits per element."""
        return 32.0
