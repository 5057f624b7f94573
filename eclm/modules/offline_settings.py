"""Settings of the offline stage (pydantic only, so the platform config loads without torch)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class OfflineSettings(BaseModel):
    """Settings of the offline stage."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(default=8, ge=0, description="stage-1 epochs (modules + selector)")
    enhance_epochs: int = Field(default=2, ge=0, description="stage-2 ability-enhancing epochs")
    batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=2e-3, gt=0, description="Adam learning rate")
    weight_decay: float = Field(default=1e-4, ge=0)
    balance_weight: float = Field(default=0.01, ge=0, description="lambda for the load-balancing loss")
    kl_weight: float = Field(default=0.1, ge=0, description="lambda for the stage-2 KL routing loss")
    min_active_fraction: float = Field(default=0.25, gt=0, le=1, description="smallest share of modules active in a step")
    classes_per_subtask: int = Field(default=2, ge=1, description="classes per default sub-task")
    kappa1: int = Field(default=2, ge=1, description="max sub-tasks per module")
    kappa2: int = Field(default=2, ge=1, description="max modules per sub-task")
    seed: int = 0
