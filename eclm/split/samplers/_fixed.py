"""Shared machinery of the fixed local-batch baselines."""

from __future__ import annotations

import math
from abc import abstractmethod

import numpy as np

from eclm.split.samplers.base import LocalBatchSampler


def round_half_up(x: float) -> int:
    """Round to nearest, halves away from zero for positive ``x`` (Python's ``round`` is
    banker's rounding, which would make ``B / K = 2.5`` and ``3.5`` round differently)."""
    return int(math.floor(x + 0.5))


class FixedLocalBatchSampler(LocalBatchSampler):
    """A constant local batch ``b_k`` per client until its data runs out.

    Step ``t`` takes ``min(b_k, remaining_k)`` from each client: a client drops out once
    exhausted and its last batch may be ragged (smaller than ``b_k``). The epoch lasts
    ``max_k ceil(n_k / b_k)`` steps, so every sample is used exactly once; late steps can be
    much smaller than ``B`` when client sizes differ.
    """

    @abstractmethod
    def local_batches(self) -> np.ndarray:
        """``(K,)`` constant local batch size of each client (>= 1)."""

    def _plan(self, rng: np.random.Generator) -> np.ndarray:
        del rng  # the plan is deterministic; only the index permutations are random
        per_step = self.local_batches()
        num_steps = int(np.max(-(-self.client_sizes // per_step)))
        steps = np.arange(num_steps)[:, None]
        taken_before = steps * per_step[None, :]
        remaining = np.clip(self.client_sizes[None, :] - taken_before, 0, None)
        return np.minimum(per_step[None, :], remaining).astype(np.int64)
