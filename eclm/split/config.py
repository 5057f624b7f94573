"""Typed configuration of split learning (composed into the platform config later)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["CodecConfig", "SplitConfig"]

CodecName = Literal["identity", "mask_encoded", "topk", "randomized_topk", "uniform_quantization"]
SamplerName = Literal["global", "fixed_proportional", "fixed_equal"]
CutPolicy = Literal["edgesplit", "uniform", "fixed"]
PlanObjective = Literal["epoch", "iteration"]
CostProfile = Literal["timed", "flops"]

# Which parameters each codec takes; anything else set is a configuration error.
_CODEC_PARAMS: dict[str, set[str]] = {
    "identity": set(),
    "mask_encoded": {"ratio", "bits", "signed"},
    "topk": {"ratio"},
    "randomized_topk": {"ratio", "seed"},
    "uniform_quantization": {"bits"},
}
_REQUIRED: dict[str, set[str]] = {
    "identity": set(),
    "mask_encoded": {"ratio", "bits"},
    "topk": {"ratio"},
    "randomized_topk": {"ratio"},
    "uniform_quantization": {"bits"},
}


class CodecConfig(BaseModel):
    """Which codec compresses the smashed activations, and its parameters."""

    model_config = ConfigDict(extra="forbid")

    name: CodecName = Field("identity", description="Codec for client -> server activations.")
    ratio: float | None = Field(
        None, ge=0.0, lt=1.0, description="Sparsity r: fraction of values not sent as float32 (MS, top-k)."
    )
    bits: int | None = Field(
        None, ge=1, le=16, description="Code width b in bits (MS, uniform quantisation)."
    )
    signed: bool | None = Field(
        None, description="MS only: always (True), never (False) or per tensor (None) send sign bits."
    )
    seed: int | None = Field(None, ge=0, description="randomized_topk only: seed of the selection generator.")

    @model_validator(mode="after")
    def _params_match_codec(self) -> CodecConfig:
        given = {p for p in ("ratio", "bits", "signed", "seed") if getattr(self, p) is not None}
        unexpected = given - _CODEC_PARAMS[self.name]
        if unexpected:
            raise ValueError(f"codec {self.name!r} does not take parameter(s) {sorted(unexpected)}")
        missing = _REQUIRED[self.name] - given
        if missing:
            raise ValueError(f"codec {self.name!r} requires parameter(s) {sorted(missing)}")
        return self


class SplitConfig(BaseModel):
    """Parallel split learning: traffic codec, local batch sampling, cut policy, optimisation.

    Cut policies: ``"edgesplit"`` plans a cut and bandwidth share per device (alternating
    algorithm); ``"uniform"`` uses the best single cut for all devices with equal bandwidth;
    ``"fixed"`` uses ``fixed_cut`` for all devices with equal bandwidth. ``edgesplit_objective``
    says what "best" means for the first two (docs/split_learning.md).
    """

    model_config = ConfigDict(extra="forbid")

    codec: CodecConfig = Field(default_factory=CodecConfig, description="Uplink activation codec.")
    sampler: SamplerName = Field(
        "global", description="Local batch sampler: GPSL global sampling or a baseline."
    )
    global_batch: int = Field(64, ge=1, le=65536, description="Samples per global step B.")
    cut_policy: CutPolicy = Field("edgesplit", description="How cut layers are chosen.")
    fixed_cut: int | None = Field(
        None, ge=1, description="Cut for cut_policy='fixed': device runs blocks [0, fixed_cut)."
    )
    lr: float = Field(0.05, gt=0.0, le=10.0, description="SGD learning rate (server and clients).")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum.")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="SGD weight decay.")
    epochs: int = Field(1, ge=1, le=100_000, description="Training epochs.")
    client_sync: Literal["epoch"] = Field(
        "epoch", description="How device parts stay one model: averaged (FedAvg) at every epoch end, the "
        "only mode (sharing summed gradients every step is not implemented).",
    )
    edgesplit_objective: PlanObjective = Field(
        "epoch",
        description="What cut planning minimises: 'epoch' = seconds of a whole epoch in the delay model "
        "(every step of the sampler's plan, latency, server time, epoch-end exchange of device parts); "
        "'iteration' = the EdgeSplit paper's per-iteration straggler time.",
    )
    cost_profile: CostProfile = Field(
        "timed",
        description="Compute costs the planner predicts from: 'timed' = each chain stage's training pass timed "
        "on the cloud at two batch sizes (a fixed cost per call plus a cost per sample); 'flops' = counted "
        "FLOPs only (no per-call cost).",
    )
    planner_max_iters: int = Field(50, ge=1, le=10_000, description="Cap on EdgeSplit alternating rounds.")
    seed: int = Field(0, ge=0, description="Seed of the sampler.")

    @model_validator(mode="after")
    def _fixed_cut_matches_policy(self) -> SplitConfig:
        if self.cut_policy == "fixed" and self.fixed_cut is None:
            raise ValueError("cut_policy='fixed' requires fixed_cut")
        if self.cut_policy != "fixed" and self.fixed_cut is not None:
            raise ValueError(f"fixed_cut is only used with cut_policy='fixed', not {self.cut_policy!r}")
        return self
