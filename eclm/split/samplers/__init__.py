"""Local batch samplers for parallel split learning (GPSL and the fixed baselines)."""

from eclm.split.samplers.base import LocalBatchSampler
from eclm.split.samplers.fixed_equal import FixedEqualSampler
from eclm.split.samplers.fixed_proportional import FixedProportionalSampler
from eclm.split.samplers.global_sampler import GlobalSampler

__all__ = ["FixedEqualSampler", "FixedProportionalSampler", "GlobalSampler", "LocalBatchSampler"]
