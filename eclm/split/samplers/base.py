"""Local batch sampling for parallel split learning: who contributes how many samples per step.

A sampler turns client dataset sizes ``n_k`` (counts only, never labels) and a global batch
size ``B`` into an epoch plan ``b[t, k]``: the number of samples client ``k`` contributes to
global step ``t``. Every concrete sampler uses every sample exactly once per epoch, so the
column sums of the plan equal ``n_k``. Clients then draw their ``b[t, k]`` samples from a
private permutation of their own indices (without replacement within the epoch).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

import numpy as np

__all__ = ["LocalBatchSampler"]


class LocalBatchSampler(ABC):
    """Strategy base class: per-step local batch sizes and sample indices for one epoch.

    Randomness is a pure function of ``(seed, epoch)``: the same sampler yields the same epoch
    plan and indices every time it is asked, and different epochs differ.

    Args:
        client_sizes: ``n_k >= 0`` samples held by each of the ``K`` clients (total >= 1).
        global_batch: target samples per global step ``B >= 1``.
        seed: base seed of the numpy Generator.

    Raises:
        ValueError: if sizes are empty, negative, all zero, or ``global_batch < 1``.
    """

    #: Short identifier used in configs and reports.
    name: str = "base"

    def __init__(self, client_sizes: Sequence[int], global_batch: int, seed: int = 0) -> None:
        sizes = np.asarray(client_sizes)
        if sizes.ndim != 1 or sizes.size == 0:
            raise ValueError(f"client_sizes must be a non-empty 1-D sequence, got shape {sizes.shape}")
        if not np.issubdtype(sizes.dtype, np.integer) or (sizes < 0).any():
            raise ValueError(f"client_sizes must be non-negative integers, got {list(client_sizes)}")
        if sizes.sum() < 1:
            raise ValueError("client_sizes must hold at least one sample in total")
        if not isinstance(global_batch, (int, np.integer)) or global_batch < 1:
            raise ValueError(f"global_batch must be an int >= 1, got {global_batch!r}")
        self.client_sizes = sizes.astype(np.int64)
        self.global_batch = int(global_batch)
        self.seed = int(seed)

    @property
    def num_clients(self) -> int:
        """Number of clients ``K``."""
        return int(self.client_sizes.size)

    @property
    def num_samples(self) -> int:
        """Pooled dataset size ``N``."""
        return int(self.client_sizes.sum())

    def _rng(self, epoch: int, stream: int) -> np.random.Generator:
        # Separate streams for the plan and the index permutations, so that samplers whose
        # plan is deterministic still shuffle indices identically to stochastic ones.
        return np.random.default_rng([self.seed, int(epoch), stream])

    def batch_sizes(self, epoch: int = 0) -> np.ndarray:
        """The epoch plan.

        Args:
            epoch: epoch number (selects the random stream).

        Returns:
            ``(T, K)`` int64 array; ``b[t, k]`` samples of client ``k`` at step ``t``; column
            sums equal ``client_sizes`` and no row is all zero.
        """
        plan = self._plan(self._rng(epoch, 0))
        # Guard the contract every consumer relies on (each sample exactly once).
        assert (plan.sum(axis=0) == self.client_sizes).all(), "sampler plan must use every sample once"
        return plan[plan.sum(axis=1) > 0]

    @abstractmethod
    def _plan(self, rng: np.random.Generator) -> np.ndarray:
        """Concrete strategy: ``(T, K)`` local batch sizes for one epoch."""

    def epoch_indices(self, epoch: int = 0) -> Iterator[list[np.ndarray]]:
        """Per-step sample indices of every client for one epoch.

        Args:
            epoch: epoch number (selects the random streams).

        Yields:
            For each step, a list of ``K`` int64 arrays of local sample indices; inactive
            clients get an empty array. Over the epoch each client's arrays concatenate to a
            permutation of ``range(n_k)``.
        """
        plan = self.batch_sizes(epoch)
        rng = self._rng(epoch, 1)
        perms = [rng.permutation(int(n)) for n in self.client_sizes]
        offsets = np.zeros(self.num_clients, dtype=np.int64)
        for row in plan:
            step = []
            for k, count in enumerate(row):
                step.append(perms[k][offsets[k] : offsets[k] + count])
                offsets[k] += count
            yield step
