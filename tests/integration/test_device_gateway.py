"""A device outside the Ray cluster joins a campaign on real Ray through its gateway.

The device's own ``EdgeService`` runs in this test process behind a ``DeviceGateway`` on
127.0.0.1 (as ``eclm device-gateway`` would run it on the device); inside the cluster its edge
actor is a ``RemoteDevice`` proxy that exchanges only JSON and safetensors bytes with it.
"""

from __future__ import annotations

import pytest
from conftest import tiny_config

from eclm.config import PlatformConfig
from eclm.gateway import DeviceGateway
from eclm.pipelines.edge_service import EdgeService
from eclm.platform import Platform

pytestmark = pytest.mark.integration


def test_a_gateway_device_takes_part_in_a_campaign_on_real_ray(local_ray, tmp_path):
    from ray._private import state

    raw = tiny_config(tmp_path, **{"offline": {"epochs": 1, "enhance_epochs": 0, "batch_size": 32,
                                               "classes_per_subtask": 3},
                                   "adaptation.epochs": 1, "tracking": {"enabled": False}, "cycles": 1,
                                   "ray.edge_pool_size": 2})
    device = EdgeService(PlatformConfig.from_dict(raw), 1, store_dir=tmp_path / "outside" / "d1")
    gateway = DeviceGateway(device).start()
    try:
        raw["devices"][1]["gateway"] = gateway.url
        with Platform(raw) as p:
            p.pretrain()
            (result,) = p.run()
            classes = [a["ActorClassName"] for a in state.actors().values() if a["State"] == "ALIVE"
                       and a["ActorClassName"] in ("RemoteDevice", "EdgePool")]
        assert not result.failures, result.failures
        assert "d1" in result.merge.accepted or "d1" in result.merge.rejected  # its upload reached the merge
        assert result.bytes_up["d1"] > 0 and result.bytes_down["d1"] > 0
        assert device.model is not None and device.version is not None  # it trained outside the cluster
        assert sorted(classes) == ["EdgePool", "RemoteDevice"]  # d0 and d2 pooled, d1 a proxy
    finally:
        gateway.close()
