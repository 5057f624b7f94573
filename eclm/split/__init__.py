"""Split learning for weak edge devices: cut planning (EdgeSplit), global sampling (GPSL),
activation codecs (Mask-Encoded Sparsification and baselines), device emulation and the optimiser
settings. The split protocol that trains with them is the platform's (``eclm.pipelines.split_cloud``,
``eclm.pipelines.split_edge``, driven by ``eclm.campaign.split_round``). Pure Python/torch/numpy: no
Ray here.

Names are imported on first use (PEP 562), so importing one light submodule (for example
a config) does not pull in torch through this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eclm._lazy import lazy_exports

if TYPE_CHECKING:
    from eclm.split.codecs import (
        EncodedActivation,
        IdentityCodec,
        MaskEncodedSparsification,
        RandomizedTopKCodec,
        SmashedCodec,
        TopKCodec,
        UniformQuantizationCodec,
        straight_through,
    )
    from eclm.split.config import CodecConfig, SplitConfig
    from eclm.split.costs import BlockCosts
    from eclm.split.edgesplit import (
        SplitDevice,
        SplitPlan,
        best_common_cut_plan,
        brute_force_plan,
        plan_edgesplit,
        uniform_cut_plan,
    )
    from eclm.split.emulation import ComputeModel, LinkModel, emulated_step_time
    from eclm.split.epoch_time import epoch_seconds
    from eclm.split.factory import build_codec, build_sampler, optimizer_settings, plan_cuts
    from eclm.split.optimizer import OptimizerSettings
    from eclm.split.samplers import (
        FixedEqualSampler,
        FixedProportionalSampler,
        GlobalSampler,
        LocalBatchSampler,
    )

_EXPORTS: dict[str, tuple[str, str]] = {
    "EncodedActivation": ("eclm.split.codecs", "EncodedActivation"),
    "IdentityCodec": ("eclm.split.codecs", "IdentityCodec"),
    "MaskEncodedSparsification": ("eclm.split.codecs", "MaskEncodedSparsification"),
    "RandomizedTopKCodec": ("eclm.split.codecs", "RandomizedTopKCodec"),
    "SmashedCodec": ("eclm.split.codecs", "SmashedCodec"),
    "TopKCodec": ("eclm.split.codecs", "TopKCodec"),
    "UniformQuantizationCodec": ("eclm.split.codecs", "UniformQuantizationCodec"),
    "straight_through": ("eclm.split.codecs", "straight_through"),
    "CodecConfig": ("eclm.split.config", "CodecConfig"),
    "SplitConfig": ("eclm.split.config", "SplitConfig"),
    "BlockCosts": ("eclm.split.costs", "BlockCosts"),
    "SplitDevice": ("eclm.split.edgesplit", "SplitDevice"),
    "SplitPlan": ("eclm.split.edgesplit", "SplitPlan"),
    "best_common_cut_plan": ("eclm.split.edgesplit", "best_common_cut_plan"),
    "brute_force_plan": ("eclm.split.edgesplit", "brute_force_plan"),
    "plan_edgesplit": ("eclm.split.edgesplit", "plan_edgesplit"),
    "uniform_cut_plan": ("eclm.split.edgesplit", "uniform_cut_plan"),
    "ComputeModel": ("eclm.split.emulation", "ComputeModel"),
    "LinkModel": ("eclm.split.emulation", "LinkModel"),
    "emulated_step_time": ("eclm.split.emulation", "emulated_step_time"),
    "epoch_seconds": ("eclm.split.epoch_time", "epoch_seconds"),
    "build_codec": ("eclm.split.factory", "build_codec"),
    "build_sampler": ("eclm.split.factory", "build_sampler"),
    "optimizer_settings": ("eclm.split.factory", "optimizer_settings"),
    "plan_cuts": ("eclm.split.factory", "plan_cuts"),
    "FixedEqualSampler": ("eclm.split.samplers", "FixedEqualSampler"),
    "FixedProportionalSampler": ("eclm.split.samplers", "FixedProportionalSampler"),
    "GlobalSampler": ("eclm.split.samplers", "GlobalSampler"),
    "LocalBatchSampler": ("eclm.split.samplers", "LocalBatchSampler"),
    "OptimizerSettings": ("eclm.split.optimizer", "OptimizerSettings"),
}

__all__ = [
    "BlockCosts",
    "CodecConfig",
    "ComputeModel",
    "EncodedActivation",
    "FixedEqualSampler",
    "FixedProportionalSampler",
    "GlobalSampler",
    "IdentityCodec",
    "LinkModel",
    "LocalBatchSampler",
    "MaskEncodedSparsification",
    "OptimizerSettings",
    "RandomizedTopKCodec",
    "SmashedCodec",
    "SplitConfig",
    "SplitDevice",
    "SplitPlan",
    "TopKCodec",
    "UniformQuantizationCodec",
    "best_common_cut_plan",
    "brute_force_plan",
    "build_codec",
    "build_sampler",
    "emulated_step_time",
    "epoch_seconds",
    "optimizer_settings",
    "plan_cuts",
    "plan_edgesplit",
    "straight_through",
    "uniform_cut_plan",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
