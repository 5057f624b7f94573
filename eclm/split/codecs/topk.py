"""Plain top-k sparsification with a 1-bit position map."""

from __future__ import annotations

import torch

from eclm.split.codecs._positional_sparse import decode_selected, encode_selected
from eclm.split.codecs.base import EncodedActivation, SmashedCodec, as_rows, check_ratio, keep_count

__all__ = ["TopKCodec"]


class TopKCodec(SmashedCodec):
    """Keep the ``k`` largest-magnitude values of each sample, drop the rest to zero.

    ``k = max(1, floor((1 - ratio) * d))`` per row (``d`` elements per sample). Layout: a
    1-bit position map per element plus the kept values as float32 in positional order, so
    ``size_bits = R * (32 * k + d)``.

    Args:
        ratio: fraction of values dropped, in ``[0, 1)``.

    Raises:
        ValueError: if ``ratio`` is out of range.
    """

    name = "topk"

    def __init__(self, ratio: float) -> None:
        self.ratio = check_ratio(ratio)

    def encode(self, x: torch.Tensor) -> EncodedActivation:
        """Encode ``x`` (see :meth:`SmashedCodec.encode`)."""
        rows = as_rows(x)
        k = keep_count(self.ratio, rows.shape[1])
        selected = torch.topk(rows.abs(), k, dim=1).indices
        return encode_selected(self.name, rows, selected, tuple(x.shape), x.dtype)

    def _decode_rows(self, encoded: EncodedActivation, num_rows: int, row_size: int) -> torch.Tensor:
        return decode_selected(encoded, num_rows, row_size)

    def nominal_bits_per_element(self) -> float:
        """``32 * (1 - ratio) + 1``."""
        return 32.0 * (1.0 - self.ratio) + 1.0
