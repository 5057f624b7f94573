"""The delta exchange between the cloud and edge services (in-process, no Ray).

Devices upload only a cycle's change, which the cloud re-bases on its current slices; a device
that holds the derived spec from an older cloud version receives the cloud's change since that
version and keeps its own adaptation.
"""

from __future__ import annotations

import struct
import zlib

import pytest
import torch

from eclm.campaign.messages import AttributedUpdate, DeviceUpdate, SubModelPackage
from eclm.config import PlatformConfig
from eclm.modules import pack_state, unpack_state
from eclm.modules.deltas import is_delta_key
from eclm.modules.wire_compression import MAGIC, is_compressed
from eclm.pipelines.cloud_service import CloudService
from eclm.pipelines.edge_service import EdgeService

torch.set_num_threads(1)


def config(tmp_path, exchange: str = "delta", delta_dtype: str = "float32", **adaptation) -> PlatformConfig:
    return PlatformConfig.from_dict({
        "name": f"exchange-{exchange}", "workdir": str(tmp_path),
        "data": {"source": "digits", "image_size": 16, "num_devices": 2, "classes_per_device": 3,
                 "samples_per_device": [30, 40]},
        "backbone": {"name": "resnet18", "kwargs": {"channels": [8, 8, 16, 16]}, "modules_per_layer": 2},
        "devices": [{"name": "d0"}, {"name": "d1", "params_fraction": 0.6}],
        # The dense exchange (every weight trained and sent; module-sparse exchange:
        # test_pipelines_sparse_exchange.py); differences travel exactly (float32) unless a test asks
        # for a narrow wire type; first deliveries in float32; every change travels, however small
        # (skipped small changes: test_pipelines_lagging_downloads.py).
        "adaptation": {"epochs": 1, "exchange": exchange, "delta_dtype": delta_dtype, "trainable": "all",
                       "first_delivery_dtype": "float32", "download_min_change": 0.0, **adaptation},
        # Every candidate passes and the full step is taken (no repair), so merged weights are predictable.
        "merge": {"tolerance": 1.0, "device_tolerance": 1.0, "server_lr": 1.0, "step_backoff": 0,
                  "repair_epochs": 0},
        "tracking": {"enabled": False},
    })


def ship(cloud: CloudService, edge: EdgeService) -> SubModelPackage:
    package = cloud.derive(edge.summary(cloud.selector_payload()))
    edge.install(package, cloud.info().costs)
    return package


def merge(cloud: CloudService, *pairs: tuple[EdgeService, DeviceUpdate]):
    """The cloud's merge of uploads attributed to the devices (the coordinator's job on the platform)."""
    return cloud.merge([AttributedUpdate(channel=e.name, issued=e.spec, enrolled_classes=e.classes, update=u)
                        for e, u in pairs])


def weights(edge: EdgeService) -> dict:
    return unpack_state(edge.snapshot_model())[0]


@pytest.fixture()
def pair(tmp_path):
    text = config(tmp_path)
    return CloudService(text), EdgeService(text, 0)


def test_upload_is_this_cycles_change_and_the_merge_rebases_it(pair):
    cloud, edge = pair
    ship(cloud, edge)
    start = weights(edge)
    upload = edge.adapt()
    delta, _, meta = unpack_state(upload.payload)
    adapted = weights(edge)
    assert meta["kind"] == "delta" and meta["base_version"] == 0
    for key, value in delta.items():
        expected = adapted[key] - start[key] if is_delta_key(key, value) else adapted[key]
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-6)
    old_slices = cloud.model.extract(unpack_state(upload.payload)[1]).state_dict()
    report = merge(cloud, (edge, upload))
    assert report.decision == "accept" and cloud.version == 1
    # One device, full step: the cloud's slices are the device's adapted weights (classifier rows
    # only for the device's classes; the others are merged by class and stay the cloud's).
    new_slices = cloud.model.extract(unpack_state(upload.payload)[1]).state_dict()
    rows = torch.tensor(upload.classes)
    others = torch.tensor([c for c in range(10) if c not in upload.classes])
    for key, value in adapted.items():
        if not is_delta_key(key, value):
            continue
        if key.startswith("fc."):
            torch.testing.assert_close(new_slices[key][rows], value[rows], rtol=0, atol=1e-5)
            assert torch.equal(new_slices[key][others], old_slices[key][others])
        else:
            torch.testing.assert_close(new_slices[key], value, rtol=0, atol=1e-5)


def test_new_cloud_version_reaches_a_device_as_a_delta_keeping_its_adaptation(tmp_path):
    text = config(tmp_path)
    cloud, mine, other = CloudService(text), EdgeService(text, 0), EdgeService(text, 1)
    ship(cloud, mine)
    ship(cloud, other)
    spec = mine.spec
    mine.adapt()  # local adaptation the device keeps
    local = weights(mine)
    old_slices = cloud.model.extract(spec).state_dict()
    assert merge(cloud, (other, other.adapt())).decision in ("accept", "partial") and cloud.version == 1
    new_slices = cloud.model.extract(spec).state_dict()

    package = ship(cloud, mine)
    _, _, meta = unpack_state(package.payload)
    assert meta["kind"] == "delta" and meta["base_version"] == 0 and mine.version == 1
    rebased = weights(mine)
    moved = 0
    for key, value in local.items():
        if is_delta_key(key, value):
            torch.testing.assert_close(rebased[key], value + (new_slices[key] - old_slices[key]), rtol=0, atol=1e-5)
            moved += int(not torch.equal(new_slices[key], old_slices[key]))
    assert moved > 0  # the merge did change something this device holds
    # Up to date now: the next derivation ships nothing.
    assert ship(cloud, mine).payload is None


def test_weights_exchange_replaces_the_device_model_on_a_new_version(tmp_path):
    text = config(tmp_path, "weights")
    cloud, mine, other = CloudService(text), EdgeService(text, 0), EdgeService(text, 1)
    ship(cloud, mine)
    ship(cloud, other)
    mine.adapt()
    upload = other.adapt()
    assert "kind" not in unpack_state(upload.payload)[2]
    merge(cloud, (other, upload))
    package = ship(cloud, mine)
    assert "kind" not in unpack_state(package.payload)[2]
    fresh = cloud.model.extract(mine.spec).state_dict()
    assert all(torch.equal(weights(mine)[k], fresh[k]) for k in fresh if is_delta_key(k, fresh[k]))


def test_a_version_the_cloud_no_longer_keeps_gets_full_weights(pair):
    cloud, edge = pair
    ship(cloud, edge)
    summary = edge.summary(cloud.selector_payload())
    cloud.version = 3  # pretend merges happened and version 0 was the only one remembered
    summary = summary.model_copy(update={"held": summary.held.model_copy(update={"version": 17})})
    package = cloud.derive(summary)
    assert "kind" not in unpack_state(package.payload)[2]


def test_device_refuses_a_delta_against_a_version_it_does_not_hold(pair):
    cloud, edge = pair
    package = ship(cloud, edge)
    state = {k: torch.zeros_like(v) for k, v in weights(edge).items() if is_delta_key(k, v)}
    spec = unpack_state(package.payload)[1]
    stale = pack_state(state, spec, {"kind": "delta", "base_version": 5, "version": 6})
    before = weights(edge)
    with pytest.raises(ValueError, match="version 5"):
        edge.install(package.model_copy(update={"payload": stale, "version": 6}), cloud.info().costs)
    assert all(torch.equal(weights(edge)[k], before[k]) for k in before) and edge.version == 0


@pytest.mark.parametrize("damage", ["shape", "missing", "kind", "truncated", "bomb"])
def test_malformed_delta_uploads_are_rejected_and_the_cloud_is_untouched(pair, damage):
    cloud, edge = pair
    ship(cloud, edge)
    upload = edge.adapt()
    delta, spec, meta = unpack_state(upload.payload)
    payload = None
    if damage == "shape":
        delta["fc.weight"] = delta["fc.weight"][:, :3].contiguous()
    elif damage == "missing":
        del delta["fc.weight"]
    elif damage == "kind":
        meta["kind"] = "gradient"
    elif damage == "truncated":  # a compressed upload cut short
        payload = pack_state(delta, spec, meta, "deflate")[:-20]
    else:  # 64 MiB of zeros declared as the size of the real upload
        payload = MAGIC + struct.pack("<Q", len(pack_state(delta, spec, meta))) + zlib.compress(bytes(64 << 20), 9)
    upload = upload.model_copy(update={"payload": payload or pack_state(delta, spec, meta)})
    digest = cloud.state_digest()
    report = merge(cloud, (edge, upload))
    assert report.decision == "reject" and cloud.version == 0
    assert report.rejected["d0"].startswith(("malformed upload", "integrity"))
    assert cloud.state_digest() == digest


def test_float16_deltas_halve_the_traffic_both_ways_and_land_within_rounding(tmp_path):
    exact_text, half_text = config(tmp_path / "f32"), config(tmp_path / "f16", delta_dtype="float16")
    runs = {}
    for name, text in (("float32", exact_text), ("float16", half_text)):
        cloud, mine, other = CloudService(text), EdgeService(text, 0), EdgeService(text, 1)
        ship(cloud, mine)
        ship(cloud, other)
        up = mine.adapt()
        assert merge(cloud, (other, other.adapt())).decision == "accept"
        down = ship(cloud, mine)
        runs[name] = {"up": up.payload, "down": down.payload, "device": weights(mine),
                      "cloud": cloud.model.extract(mine.spec).state_dict()}
    exact, half = runs["float32"], runs["float16"]
    for way in ("up", "down"):
        delta, _, meta = unpack_state(half[way])
        assert meta["kind"] == "delta"
        assert {v.dtype for k, v in delta.items() if is_delta_key(k, v)} == {torch.float16}
        assert len(half[way]) < 0.6 * len(exact[way])
    # Same seeds, same data: the float16 run lands where the exact one does, up to rounding.
    for key, value in exact["device"].items():
        if is_delta_key(key, value):
            torch.testing.assert_close(half["device"][key], value, rtol=0, atol=2e-3)
            torch.testing.assert_close(half["cloud"][key], exact["cloud"][key], rtol=0, atol=2e-3)


def test_lossless_wire_compression_changes_bytes_only(tmp_path):
    """The platform's codec (int8 deltas, float16 first deliveries) with and without DEFLATE: the
    same cycle lands bit for bit in the same place, and every payload is smaller."""
    runs = {}
    for mode in ("none", "deflate"):
        text = config(tmp_path / mode, delta_dtype="int8", first_delivery_dtype="float16", wire_compression=mode)
        cloud, mine, other = CloudService(text), EdgeService(text, 0), EdgeService(text, 1)
        first = ship(cloud, mine)
        ship(cloud, other)
        up = mine.adapt()
        assert merge(cloud, (other, other.adapt())).decision == "accept"
        down = ship(cloud, mine)
        runs[mode] = {"first": first.payload, "up": up.payload, "down": down.payload, "device": weights(mine),
                      "cloud": cloud.model.state_dict()}
    plain, packed = runs["none"], runs["deflate"]
    for way in ("first", "up", "down"):
        assert is_compressed(packed[way]) and not is_compressed(plain[way])
        (state, spec, meta), (plain_state, plain_spec, plain_meta) = unpack_state(packed[way]), unpack_state(plain[way])
        assert (spec, meta) == (plain_spec, plain_meta) and state.keys() == plain_state.keys()
        assert all(torch.equal(state[k], plain_state[k]) for k in state)
        assert len(packed[way]) < len(plain[way])
    for part in ("device", "cloud"):
        assert plain[part].keys() == packed[part].keys()
        assert all(torch.equal(plain[part][k], packed[part][k]) for k in plain[part])


@pytest.mark.parametrize("damage", ["inf", "float64"])
def test_a_poisoned_float16_delta_upload_is_rejected_and_the_cloud_is_untouched(tmp_path, damage):
    text = config(tmp_path, delta_dtype="float16")
    cloud, edge = CloudService(text), EdgeService(text, 0)
    ship(cloud, edge)
    upload = edge.adapt()
    delta, spec, meta = unpack_state(upload.payload)
    assert delta["fc.weight"].dtype == torch.float16
    if damage == "inf":  # what an overflowing float16 change looks like on arrival
        delta["fc.weight"] = torch.full_like(delta["fc.weight"], float("inf"))
    else:  # a wider type than the weights is never a valid wire type
        delta["fc.weight"] = delta["fc.weight"].double()
    upload = upload.model_copy(update={"payload": pack_state(delta, spec, meta)})
    digest = cloud.state_digest()
    report = merge(cloud, (edge, upload))
    assert report.decision == "reject" and cloud.version == 0
    assert "fc.weight" in report.rejected["d0"]
    assert cloud.state_digest() == digest


def test_a_device_caught_by_the_behaviour_check_gets_the_cloud_weights_instead_of_a_delta(pair):
    cloud, edge = pair
    ship(cloud, edge)
    edge.adapt()  # its local weights now differ from the cloud's version 0
    assert any(not torch.equal(weights(edge)[k], v) for k, v in cloud.model.extract(edge.spec).state_dict().items()
               if is_delta_key(k, v))
    kept = cloud.derive(edge.summary(cloud.selector_payload()))
    assert kept.payload is None  # it holds the current version: nothing is sent, it keeps its weights
    cloud.quarantine.record({"d0": "screen: behaviour: accuracy on its own classes 0.8 -> 0.1"})
    package = ship(cloud, edge)
    _, _, meta = unpack_state(package.payload)
    assert "kind" not in meta and package.version == cloud.version == 0  # a full first delivery
    cloud_slices = cloud.model.extract(edge.spec).state_dict()
    for key, value in weights(edge).items():
        if is_delta_key(key, value):
            torch.testing.assert_close(value, cloud_slices[key], rtol=0, atol=0)
    assert cloud.derive(edge.summary(cloud.selector_payload())).payload is None  # once per rejected upload


def test_a_whole_sub_model_is_packed_once_per_version_and_spec(tmp_path, monkeypatch):
    """First deliveries name no device: devices given the same spec at the same version get the
    same bytes, packed once; after a merge they carry the new version's weights."""
    import eclm.pipelines.cloud_service as cloud_module

    packed = []
    whole = cloud_module.first_delivery
    monkeypatch.setattr(cloud_module, "first_delivery", lambda *a: packed.append(1) or whole(*a))
    base = config(tmp_path).model_dump()
    base["merge"]["screen"]["enabled"] = False  # any merge will do: only the new version matters here
    text = PlatformConfig.from_dict(base | {"devices": [{"name": "d0"}, {"name": "d1"}]})
    cloud, a, b = CloudService(text), EdgeService(text, 0), EdgeService(text, 1)
    first_a, first_b = ship(cloud, a), ship(cloud, b)
    assert first_a.spec == first_b.spec and first_a.payload == first_b.payload and len(packed) == 1
    state, spec, meta = unpack_state(first_a.payload)
    assert meta == {"version": 0} and spec == first_a.spec
    assert all(torch.equal(state[k], v) for k, v in cloud.model.extract(spec).state_dict().items() if k in state)

    assert merge(cloud, (b, b.adapt())).decision in ("accept", "partial") and cloud.version == 1
    fresh = cloud.derive(a.summary(cloud.selector_payload()).model_copy(update={"held": None}))
    state, _, meta = unpack_state(fresh.payload)
    assert meta == {"version": 1} and fresh.payload != first_a.payload and len(packed) == 2
    now = cloud.model.extract(fresh.spec).state_dict()
    assert all(torch.equal(state[k], now[k]) for k in state)
    assert list(cloud._whole_payloads) == [fresh.spec]  # the old version's payload was let go


def test_a_restored_version_is_never_served_from_a_payload_packed_before(tmp_path):
    """Two clouds reach version 1 with different weights; one restores the other's snapshot: a
    version number alone does not make a packed payload current."""
    base = config(tmp_path).model_dump()
    base["merge"]["screen"]["enabled"] = False
    text = PlatformConfig.from_dict(base | {"devices": [{"name": "d0"}, {"name": "d1"}]})
    mine, theirs = CloudService(text), CloudService(text)
    a, b = EdgeService(text, 0), EdgeService(text, 1)
    ship(mine, a)
    ship(theirs, b)
    assert merge(mine, (a, a.adapt())).decision == "accept" and merge(theirs, (b, b.adapt())).decision == "accept"
    fresh = a.summary(mine.selector_payload()).model_copy(update={"held": None})
    before = unpack_state(mine.derive(fresh).payload)[0]  # packed at version 1 of ``mine``
    assert mine.restore(theirs.snapshot()) == 1
    after = unpack_state(mine.derive(fresh).payload)[0]
    want = theirs.model.extract(mine.derive(fresh).spec).state_dict()
    assert all(torch.equal(after[k], want[k]) for k in after)
    assert any(not torch.equal(after[k], before[k]) for k in after)
