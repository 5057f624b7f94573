"""Turning a device service's state into a :class:`DeviceSnapshot` and back.

What a device must not lose when its process dies: the adapted sub-model (weights, spec, version,
the modules it holds from older versions, cost table, what it trains), the codec's error-feedback residual and, without
``adaptation.keep_local``, the version received last (stored with the weights under the
``residual/`` and ``received/`` prefixes), the replay buffer, the drift reference, resources it was told about,
how many rounds it adapted (it seeds the batch order) and its stream position.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from eclm.campaign.device_store import DeviceSnapshot
from eclm.modules import CostTable, rebuild_submodel

_RESIDUAL = "residual/"
_RECEIVED = "received/"

if TYPE_CHECKING:
    from eclm.pipelines.edge_service import EdgeService


def snapshot_service(service: EdgeService) -> tuple[DeviceSnapshot, dict[str, Tensor] | None, dict[str, Tensor] | None]:
    """``(snapshot, weights, replay tensors)`` of ``service`` at its current stream step."""
    replay_info, replay_tensors = service.replay.state_dict()
    snap = DeviceSnapshot(
        stream_step=service.stream.step_index, stream=service.stream.state_dict(), rounds=service.rounds,
        version=service.version, lagging=service.lagging, spec=service.spec, trainable=service.trainable,
        costs=service.costs.to_dict() if service.costs else None,
        resources=dict(service.resources), memory_overridden=service.memory_overridden,
        detector=service.detector.state_dict(), replay=replay_info,
    )
    weights = None
    if service.model is not None:
        weights = dict(service.model.state_dict()) | {_RESIDUAL + k: v for k, v in service.exchange.residual.items()}
        weights |= {_RECEIVED + k: v for k, v in service.exchange.received.items()}
    return snap, weights, replay_tensors or None


def restore_service(service: EdgeService, snap: DeviceSnapshot, weights: dict[str, Tensor] | None,
                    replay: dict[str, Tensor] | None) -> None:
    """Put ``service`` back into the state of ``snap``.

    Raises:
        ValueError: If the snapshot belongs to another device or does not fit the architecture.
    """
    service.stream.load_state_dict(snap.stream)
    service.rounds, service.version, service.lagging = snap.rounds, snap.version, snap.lagging
    service.resources.update(snap.resources)
    service.memory_overridden = snap.memory_overridden
    service.detector.load_state_dict(snap.detector)
    if snap.replay is not None:
        service.replay.load_state_dict(snap.replay, replay or {})
    service.costs = CostTable.from_dict(snap.costs) if snap.costs is not None else None
    service.trainable = snap.trainable
    service.exchange.residual = {k[len(_RESIDUAL):]: v for k, v in (weights or {}).items() if k.startswith(_RESIDUAL)}
    service.exchange.received = {k[len(_RECEIVED):]: v for k, v in (weights or {}).items() if k.startswith(_RECEIVED)}
    if snap.spec is not None and weights is not None:
        model = {k: v for k, v in weights.items() if not k.startswith((_RESIDUAL, _RECEIVED))}
        service.model, service.spec = rebuild_submodel(service.skeleton, snap.spec, model), snap.spec
    else:
        service.model, service.spec = None, None


__all__ = ["restore_service", "snapshot_service"]
