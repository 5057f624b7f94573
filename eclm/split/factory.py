"""Build codecs, samplers, optimiser settings and cut plans from a :class:`SplitConfig`."""

from __future__ import annotations

from collections.abc import Sequence

from eclm.split.codecs import (
    IdentityCodec,
    MaskEncodedSparsification,
    RandomizedTopKCodec,
    SmashedCodec,
    TopKCodec,
    UniformQuantizationCodec,
)
from eclm.split.config import CodecConfig, SplitConfig
from eclm.split.costs import BlockCosts
from eclm.split.edgesplit import (
    SplitDevice,
    SplitPlan,
    best_common_cut_plan,
    plan_edgesplit,
    uniform_cut_plan,
)
from eclm.split.samplers import FixedEqualSampler, FixedProportionalSampler, GlobalSampler, LocalBatchSampler
from eclm.split.training import OptimizerSettings

__all__ = ["build_codec", "build_sampler", "optimizer_settings", "plan_cuts"]

_SAMPLERS: dict[str, type[LocalBatchSampler]] = {
    cls.name: cls for cls in (GlobalSampler, FixedProportionalSampler, FixedEqualSampler)
}


def build_codec(config: CodecConfig) -> SmashedCodec:
    """The codec named by ``config`` with its parameters (validated by the config)."""
    if config.name == "identity":
        return IdentityCodec()
    if config.name == "mask_encoded":
        return MaskEncodedSparsification(ratio=config.ratio, bits=config.bits, signed=config.signed)
    if config.name == "topk":
        return TopKCodec(ratio=config.ratio)
    if config.name == "randomized_topk":
        return RandomizedTopKCodec(ratio=config.ratio, seed=config.seed or 0)
    if config.name == "uniform_quantization":
        return UniformQuantizationCodec(bits=config.bits)
    raise ValueError(f"unknown codec {config.name!r}")


def build_sampler(config: SplitConfig, client_sizes: Sequence[int]) -> LocalBatchSampler:
    """The local batch sampler of ``config`` for clients holding ``client_sizes`` samples."""
    return _SAMPLERS[config.sampler](client_sizes, config.global_batch, seed=config.seed)


def optimizer_settings(config: SplitConfig) -> OptimizerSettings:
    """SGD settings of ``config``."""
    return OptimizerSettings(lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def plan_cuts(
    config: SplitConfig,
    costs: BlockCosts,
    devices: Sequence[SplitDevice],
    total_bandwidth: float,
    server_speed: float,
) -> SplitPlan:
    """Apply the configured cut policy; the codec's nominal compression ratio shrinks uplink bytes.

    Raises:
        ValueError: from the planners (infeasible memory, bad arguments), or if ``fixed_cut``
            exceeds the number of blocks.
    """
    ratio = build_codec(config.codec).compression_ratio()
    if config.cut_policy == "edgesplit":
        return plan_edgesplit(
            costs,
            devices,
            total_bandwidth,
            server_speed,
            compression_ratio=ratio,
            max_iters=config.planner_max_iters,
        )
    if config.cut_policy == "uniform":
        return best_common_cut_plan(costs, devices, total_bandwidth, server_speed, compression_ratio=ratio)
    assert config.fixed_cut is not None  # guaranteed by the config validator
    return uniform_cut_plan(
        costs, devices, total_bandwidth, server_speed, config.fixed_cut, compression_ratio=ratio
    )
