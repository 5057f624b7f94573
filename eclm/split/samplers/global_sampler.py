"""GPSL global sampling: every global batch is a uniform draw from the pooled data."""

from __future__ import annotations

import math

import numpy as np

from eclm.split.samplers.base import LocalBatchSampler

__all__ = ["GlobalSampler"]


class GlobalSampler(LocalBatchSampler):
    """Global-sampling parallel split learning (Kohankhaki et al., arXiv 2407.15738).

    Each epoch the server shuffles the multiset in which client ``k`` appears ``n_k`` times,
    splits it into ``ceil(N / B)`` near-equal consecutive batches (sizes differ by at most
    one) and counts each client's share per batch. The counts of a batch are multivariate
    hypergeometric, so the class mix of a global batch is that of a uniform batch from the
    pooled data even when every client holds a single class. Only counts are needed, so the
    server learns nothing about labels.
    """

    name = "global"

    def _plan(self, rng: np.random.Generator) -> np.ndarray:
        owners = np.repeat(np.arange(self.num_clients), self.client_sizes)
        rng.shuffle(owners)
        num_steps = math.ceil(self.num_samples / self.global_batch)
        return np.stack(
            [np.bincount(chunk, minlength=self.num_clients) for chunk in np.array_split(owners, num_steps)]
        ).astype(np.int64)
