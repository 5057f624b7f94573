"""Randomised top-k: sample the kept positions with probability proportional to magnitude."""

from __future__ import annotations

import torch

from eclm.split.codecs._positional_sparse import decode_selected, encode_selected
from eclm.split.codecs.base import EncodedActivation, SmashedCodec, as_rows, check_ratio, keep_count

__all__ = ["RandomizedTopKCodec"]


class RandomizedTopKCodec(SmashedCodec):
    """Keep ``k`` positions per sample drawn without replacement with probability ``∝ |x|``.

    eclm's variant of randomised top-k: successive sampling without replacement (the
    Plackett-Luce draw), done in one shot with the Gumbel-top-k trick: keep the ``k`` largest
    ``log|x_j| + G_j`` with ``G_j`` i.i.d. standard Gumbel. Large values are kept with high
    probability, small ones sometimes, which spreads the error over steps. Kept values are
    sent unscaled (no unbiasing), as in top-k. Zeros are only picked when a row has fewer than
    ``k`` non-zeros. Layout and size are those of :class:`TopKCodec`:
    ``size_bits = R * (32 * k + d)``.

    Randomness comes from the codec's own ``torch.Generator``, so a codec built with the same
    seed and fed the same tensors selects the same positions.

    Args:
        ratio: fraction of values dropped, in ``[0, 1)``.
        seed: seed of the codec's generator.

    Raises:
        ValueError: if ``ratio`` is out of range.
    """

    name = "randomized_topk"

    def __init__(self, ratio: float, seed: int = 0) -> None:
        self.ratio = check_ratio(ratio)
        self.seed = int(seed)
        self._generator = torch.Generator().manual_seed(self.seed)

    def encode(self, x: torch.Tensor) -> EncodedActivation:
        """Encode ``x`` (see :meth:`SmashedCodec.encode`); advances the generator."""
        rows = as_rows(x)
        k = keep_count(self.ratio, rows.shape[1])
        uniform = torch.rand(rows.shape, generator=self._generator).clamp_(min=1e-20, max=1.0 - 1e-7)
        gumbel = -torch.log(-torch.log(uniform))
        keys = torch.log(rows.abs()) + gumbel  # log(0) = -inf: zeros lose to every non-zero
        selected = torch.topk(keys, k, dim=1).indices
        return encode_selected(self.name, rows, selected, tuple(x.shape), x.dtype)

    def _decode_rows(self, encoded: EncodedActivation, num_rows: int, row_size: int) -> torch.Tensor:
        return decode_selected(encoded, num_rows, row_size)

    def nominal_bits_per_element(self) -> float:
        """``32 * (1 - ratio) + 1``."""
        return 32.0 * (1.0 - self.ratio) + 1.0
