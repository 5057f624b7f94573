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
from eclm.split.optimizer import OptimizerSettings
from eclm.split.samplers import FixedEqualSampler, FixedProportionalSampler, GlobalSampler, LocalBatchSampler

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
    *,
    client_sizes: Sequence[int] | None = None,
) -> SplitPlan:
    """Apply the configured cut policy; the codec's nominal compression ratio shrinks uplink bytes.

    The epoch objective times epoch 0 of the configured sampler for ``client_sizes`` (later epochs
    give every device the same samples in a different order of steps).

    Args:
        config: split settings (cut policy, objective, sampler, codec).
        costs: per-block costs of the chain.
        devices: the participating devices, in client order.
        total_bandwidth: bytes/s of the pool.
        server_speed: server FLOP/s.
        client_sizes: local training samples per device; required by the epoch objective, and
            when given every plan carries its predicted ``epoch_time``.

    Raises:
        ValueError: from the planners (infeasible memory, bad arguments), if ``fixed_cut``
            exceeds the number of blocks, or if the epoch objective gets no ``client_sizes``.
    """
    ratio = build_codec(config.codec).compression_ratio()
    objective = config.edgesplit_objective
    if client_sizes is None and objective == "epoch" and config.cut_policy != "fixed":
        raise ValueError("split.edgesplit_objective='epoch' plans from the sampler's epoch: pass client_sizes")
    steps = None if client_sizes is None else build_sampler(config, client_sizes).batch_sizes(0)
    common = {"compression_ratio": ratio, "step_batches": steps}
    if config.cut_policy == "edgesplit":
        return plan_edgesplit(costs, devices, total_bandwidth, server_speed, objective=objective,
                              max_iters=config.planner_max_iters, **common)
    if config.cut_policy == "uniform":
        return best_common_cut_plan(costs, devices, total_bandwidth, server_speed, objective=objective, **common)
    assert config.fixed_cut is not None  # guaranteed by the config validator
    return uniform_cut_plan(costs, devices, total_bandwidth, server_speed, config.fixed_cut, **common)
