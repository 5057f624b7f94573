"""``Platform.serve``: deploy the cloud model or a device's sub-model across (emulated) edge nodes."""

from __future__ import annotations

from typing import Any

from eclm.campaign.coordinator import CycleCoordinator
from eclm.config import PlatformConfig


def serving_config(cfg: PlatformConfig, config: Any, nodes: list | None, objective: str | None,
                   scheduler: str | None, overrides: dict[str, Any]):
    """The serving settings: ``config`` (or the platform's ``serving`` section) with the overrides.

    Raises:
        ValueError: If a setting is invalid (the message names it).
    """
    from eclm.serving import ServingConfig

    base = config if config is not None else cfg.serving
    out = base if isinstance(base, ServingConfig) else ServingConfig.model_validate(base or {})
    update = {k: v for k, v in {"objective": objective, "scheduler": scheduler}.items() if v is not None}
    if update or overrides:
        out = ServingConfig.model_validate({**out.model_dump(), **update, **overrides})
    return out.with_nodes(nodes) if nodes is not None else out


def deploy(coordinator: CycleCoordinator, cfg: PlatformConfig, tracker, model: str, serving, name: str):
    """Start a :class:`~eclm.runtime.serving.Deployment` of ``model`` (``"cloud"`` or a device name).

    Raises:
        ValueError: If ``model`` is unknown or the device holds no sub-model yet.
    """
    from eclm.runtime.serving import Deployment
    from eclm.serving import ModelSource

    if model == "cloud":
        payload = coordinator._cloud(lambda c: c.model_payload(), "model payload")
    elif model in coordinator.fleet.devices:
        results, failures = coordinator.fleet.gather({"e": coordinator.fleet.devices[model].snapshot_model()})
        if failures:
            raise RuntimeError(f"device {model}: {failures['e']}")
        payload = results["e"]
        if payload is None:
            raise ValueError(f"device {model!r} holds no sub-model yet; run a cycle for it first")
    else:
        raise ValueError(f"model must be 'cloud' or one of the devices {coordinator.names}, got {model!r}")
    b, info = cfg.backbone, coordinator.info
    source = ModelSource(info.arch, b.modules_per_layer, cfg.input_size, payload, b.selector_width, b.selector_dim,
                         name=model, meta={"model_id": info.model_id})
    return Deployment(source, serving, tracker=tracker, name=name)


__all__ = ["deploy", "serving_config"]
