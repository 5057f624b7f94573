"""What each package carries and why (``SubModelPackage.delivery``), in-process: the cloud names
every whole sub-model's reason, the cycle result and MLflow's metrics and device table carry it."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from eclm.campaign.messages import SubModelPackage
from eclm.campaign.results import CycleResult
from eclm.campaign.tracking_recorder import _cycle_metrics, device_table
from eclm.pipelines.cloud_service import CloudService
from eclm.pipelines.edge_service import EdgeService
from tests.unit.test_pipelines_lagging_downloads import config, new_version

torch.set_num_threads(1)


def derive(cloud: CloudService, edge: EdgeService) -> SubModelPackage:
    return cloud.derive(edge.summary(cloud.selector_payload()))


def install(cloud: CloudService, edge: EdgeService) -> SubModelPackage:
    package = derive(cloud, edge)
    edge.install(package, cloud.info().costs)
    return package


def some_module(package: SubModelPackage) -> tuple[int, int]:
    layer = next(i for i, g in enumerate(package.spec.groups) if g)
    return layer, package.spec.groups[layer][0]


@pytest.fixture()
def pair(tmp_path):
    cfg = config(tmp_path, keep_versions=2)
    return CloudService(cfg), EdgeService(cfg, 0)


def test_first_then_kept_then_delta_then_expired(pair):
    cloud, edge = pair
    first = install(cloud, edge)
    assert first.delivery == "first" and first.payload is not None
    kept = derive(cloud, edge)
    assert kept.delivery == "kept" and kept.payload is None
    new_version(cloud, {some_module(first): 0.5})
    delta = install(cloud, edge)
    assert delta.delivery == "delta"
    for _ in range(2):  # two more versions: with keep_versions=2 the one the device holds is dropped
        new_version(cloud, {some_module(first): 0.5})
    expired = derive(cloud, edge)
    assert expired.delivery == "expired" and expired.nbytes > delta.nbytes


def test_fresh_weights_after_a_rejection_are_a_refresh(pair):
    cloud, edge = pair
    install(cloud, edge)
    cloud.quarantine.refresh.add(edge.name)
    refresh = derive(cloud, edge)
    assert refresh.delivery == "refresh" and refresh.payload is not None
    assert derive(cloud, edge).delivery == "kept"  # asked once: cleared


def test_the_weights_exchange_sends_whole_sub_models_every_time(tmp_path):
    cfg = config(tmp_path)
    cfg = cfg.model_copy(update={"adaptation": cfg.adaptation.model_copy(update={"exchange": "weights"})})
    cloud, edge = CloudService(cfg), EdgeService(cfg, 0)
    first = install(cloud, edge)
    new_version(cloud, {some_module(first): 0.5})
    assert first.delivery == "first" and derive(cloud, edge).delivery == "weights"


@pytest.mark.parametrize(("delivery", "payload"), [("kept", b"x"), ("delta", None), ("first", None)])
def test_a_delivery_must_match_its_payload(pair, delivery, payload):
    cloud, _ = pair
    with pytest.raises(ValidationError, match="delivery"):
        SubModelPackage(device="d0", spec=cloud.model.full_spec(), payload=payload, version=0, delivery=delivery)


def test_unknown_deliveries_are_refused(pair):
    cloud, _ = pair
    with pytest.raises(ValidationError):
        SubModelPackage(device="d0", spec=cloud.model.full_spec(), payload=b"x", version=0, delivery="gift")


def test_cycle_metrics_count_deliveries_and_the_device_table_names_them():
    result = CycleResult(round=1, devices=["a", "b", "c", "d"],
                         deliveries={"a": "first", "b": "first", "c": "delta"}, bytes_down={"a": 10, "b": 10, "c": 2})
    m = _cycle_metrics(result, per_device=False)
    assert m["traffic/deliveries/first"] == 2 and m["traffic/deliveries/delta"] == 1
    assert not any(k.startswith("traffic/deliveries/") and k.endswith(("kept", "expired")) for k in m)
    table = device_table(result)
    col = table["columns"].index("delivery")
    assert {row[0]: row[col] for row in table["data"]} == {"a": "first", "b": "first", "c": "delta", "d": None}


@pytest.mark.parametrize("keep", [2, 3])
def test_a_held_version_expires_after_keep_versions_merges(tmp_path, keep):
    """The boundary the traffic count depends on: ``keep - 1`` newer versions still ship a delta,
    ``keep`` newer versions drop the held one (the cloud keeps the newest ``keep``, current included)."""
    cfg = config(tmp_path, keep_versions=keep)
    cloud, edge = CloudService(cfg), EdgeService(cfg, 0)
    first = install(cloud, edge)
    for _ in range(keep - 1):
        new_version(cloud, {some_module(first): 0.5})
    assert derive(cloud, edge).delivery == "delta"
    new_version(cloud, {some_module(first): 0.5})
    assert derive(cloud, edge).delivery == "expired"


def test_the_kept_versions_share_one_cache_budget(tmp_path):
    from eclm.pipelines.cloud_service import _VERSION_CACHE_BYTES

    cfg = config(tmp_path, keep_versions=3)
    cloud, edge = CloudService(cfg), EdgeService(cfg, 0)
    first = install(cloud, edge)
    for _ in range(4):
        new_version(cloud, {some_module(first): 0.5})
        derive(cloud, edge)
    caches = [cloud._submodels(v) for v in cloud._versions]
    assert len(caches) == 3 and sum(c.max_bytes for c in caches) <= _VERSION_CACHE_BYTES
