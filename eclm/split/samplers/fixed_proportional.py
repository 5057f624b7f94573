"""Baseline: fixed local batches proportional to client dataset size."""

from __future__ import annotations

import numpy as np

from eclm.split.samplers._fixed import FixedLocalBatchSampler, round_half_up

__all__ = ["FixedProportionalSampler"]


class FixedProportionalSampler(FixedLocalBatchSampler):
    """``b_k = max(1, round(B * n_k / N))`` every step; clients drop out when exhausted.

    Rounding makes the global batch only approximately ``B``; ragged last batches and
    drop-outs are described in :class:`FixedLocalBatchSampler`.
    """

    name = "fixed_proportional"

    def local_batches(self) -> np.ndarray:
        """``(K,)`` local batch sizes ``max(1, round(B * n_k / N))``."""
        share = self.global_batch * self.client_sizes / self.num_samples
        return np.array([max(1, round_half_up(s)) for s in share], dtype=np.int64)
