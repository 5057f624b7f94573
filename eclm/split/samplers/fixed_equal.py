"""Baseline: the same fixed local batch for every client."""

from __future__ import annotations

import numpy as np

from eclm.split.samplers._fixed import FixedLocalBatchSampler, round_half_up

__all__ = ["FixedEqualSampler"]


class FixedEqualSampler(FixedLocalBatchSampler):
    """``b_k = max(1, round(B / K))`` every step; clients drop out when exhausted.

    Under label skew with unequal client sizes the early global batches over-represent small
    clients and the late ones contain only the largest clients, which is what GPSL fixes.
    """

    name = "fixed_equal"

    def local_batches(self) -> np.ndarray:
        """``(K,)`` local batch sizes ``max(1, round(B / K))``."""
        size = max(1, round_half_up(self.global_batch / self.num_clients))
        return np.full(self.num_clients, size, dtype=np.int64)
