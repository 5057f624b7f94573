"""Split learning for weak edge devices: cut planning (EdgeSplit), global sampling (GPSL),
activation codecs (Mask-Encoded Sparsification and baselines), device emulation and an
in-process parallel split-learning trainer. Pure Python/torch/numpy: no Ray here."""

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
from eclm.split.evaluation import EvalResult, evaluate
from eclm.split.factory import build_codec, build_sampler, optimizer_settings, plan_cuts
from eclm.split.samplers import FixedEqualSampler, FixedProportionalSampler, GlobalSampler, LocalBatchSampler
from eclm.split.training import EpochMetrics, OptimizerSettings, ParallelSplitTrainer, replicate

__all__ = [
    "BlockCosts",
    "CodecConfig",
    "ComputeModel",
    "EncodedActivation",
    "EpochMetrics",
    "EvalResult",
    "FixedEqualSampler",
    "FixedProportionalSampler",
    "GlobalSampler",
    "IdentityCodec",
    "LinkModel",
    "LocalBatchSampler",
    "MaskEncodedSparsification",
    "OptimizerSettings",
    "ParallelSplitTrainer",
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
    "evaluate",
    "optimizer_settings",
    "plan_cuts",
    "plan_edgesplit",
    "replicate",
    "straight_through",
    "uniform_cut_plan",
]
