"""Module-sparse adaptation and exchange between the cloud and edge services (in-process, no Ray).

A device trains only the modules the cloud named, uploads only those (int8 per output channel),
the cloud merges them as the only contribution of that device, and a device receives only the
modules that changed since the version it holds.
"""

from __future__ import annotations

import pytest
import torch

from eclm.campaign.messages import Resources
from eclm.config import PlatformConfig
from eclm.modules import pack_state, unpack_state
from eclm.modules.codec import SCALE_SUFFIX, decode
from eclm.modules.deltas import is_delta_key
from eclm.modules.merge import tensor_owner
from eclm.modules.respec import split_spec
from eclm.modules.sparse_delta import Parts, take
from eclm.pipelines.cloud_service import CloudService
from eclm.pipelines.edge_service import EdgeService
from tests.unit.test_pipelines_exchange import merge, ship, weights

torch.set_num_threads(1)


def config(tmp_path, **adaptation) -> PlatformConfig:
    return PlatformConfig.from_dict({
        "name": "sparse", "workdir": str(tmp_path),
        "data": {"source": "digits", "image_size": 16, "num_devices": 2, "classes_per_device": 3,
                 "samples_per_device": [30, 40]},
        "backbone": {"name": "resnet18", "kwargs": {"channels": [8, 8, 16, 16]}, "modules_per_layer": 2},
        "offline": {"epochs": 1, "enhance_epochs": 0},
        "devices": [{"name": "d0", "memory_mb": 4}, {"name": "d1", "params_fraction": 0.6}],
        "adaptation": {"epochs": 1, "trainable": "budgeted", "trainable_share": 0.3, "delta_dtype": "int8",
                       "first_delivery_dtype": "float16"} | adaptation,
        "merge": {"tolerance": 1.0, "device_tolerance": 1.0, "server_lr": 1.0, "step_backoff": 0},
        "tracking": {"enabled": False},
    })


@pytest.fixture()
def trio(tmp_path):
    cfg = config(tmp_path)
    return CloudService(cfg), EdgeService(cfg, 0), EdgeService(cfg, 1)


@pytest.mark.parametrize("head", ["own", "all"])
def test_a_device_trains_uploads_and_contributes_only_what_the_cloud_named(tmp_path, head):
    cfg = config(tmp_path, train_head=head)
    cloud, edge = CloudService(cfg), EdgeService(cfg, 0)
    package = ship(cloud, edge)
    plan = package.trainable
    assert plan is not None and plan.within(package.spec)
    assert plan.head_rows == (tuple(sorted(edge.classes)) if head == "own" else None)
    assert package.cost["train_memory"] <= package.budget["train_memory"] == 4 * 2**20
    held = weights(edge)
    upload = edge.adapt()
    wire, spec, meta = unpack_state(upload.payload)
    assert meta["kind"] == "delta" and [tuple(g) for g in meta["groups"]] == list(plan.groups)
    assert any(v.dtype == torch.int8 for v in wire.values()) and all(k[: -len(SCALE_SUFFIX)] in wire
                                                                     for k in wire if k.endswith(SCALE_SUFFIX))
    trained_layers = {i for i, g in enumerate(plan.groups) if g}
    carried_layers = {tensor_owner(cloud.model.layers, k)[0] for k in decode(wire) if tensor_owner(cloud.model.layers, k)}
    assert carried_layers == trained_layers
    assert wire["fc.weight"].shape[0] == len(edge.classes)  # only its own classes' rows travel
    # frozen modules did not move on the device
    after = weights(edge)
    for key, value in after.items():
        owner = tensor_owner(cloud.model.layers, key)
        if is_delta_key(key, value) and owner is not None and not plan.groups[owner[0]]:
            assert torch.equal(value, held[key])
    old = cloud.model.backbone.state_dict()
    old = {k: v.clone() for k, v in old.items()}
    assert merge(cloud, (edge, upload)).decision == "accept"
    new = cloud.model.backbone.state_dict()
    for key, value in new.items():
        owner = tensor_owner(cloud.model.layers, key)
        untouched = (owner is not None and not plan.groups[owner[0]]) or (owner is None and not key.startswith("fc.")
                                                                          and not plan.shared)
        if untouched and is_delta_key(key, value):  # not contributed, not averaged with "unchanged"
            assert torch.equal(value, old[key]), key
    others = [c for c in range(10) if c not in edge.classes]
    assert torch.equal(new["fc.weight"][others], old["fc.weight"][others])
    if head == "own":  # rows of other classes did not move on the device either
        assert torch.equal(after["fc.weight"][others], held["fc.weight"][others])


def test_downloads_carry_only_changed_modules_and_keep_the_local_adaptation(tmp_path):
    cfg = config(tmp_path, delta_dtype="float32", first_delivery_dtype="float32")
    cloud, mine, other = CloudService(cfg), EdgeService(cfg, 0), EdgeService(cfg, 1)
    ship(cloud, mine)
    ship(cloud, other)
    mine.adapt()
    local = weights(mine)
    old = cloud.model.extract(mine.spec).state_dict()
    merge(cloud, (other, other.adapt()))
    new = cloud.model.extract(mine.spec).state_dict()
    package = ship(cloud, mine)
    wire, _, meta = unpack_state(package.payload)
    assert meta["kind"] == "delta" and "groups" in meta
    changed = {k for k in new if is_delta_key(k, new[k]) and not torch.equal(new[k], old[k])}
    assert changed and set(wire) <= {k for k in new if is_delta_key(k, new[k])}
    assert {k for k in changed if not k.startswith("fc.")} == {k for k in wire if not k.startswith("fc.")}
    rebased = weights(mine)
    for key in local:
        if is_delta_key(key, local[key]):
            torch.testing.assert_close(rebased[key], local[key] + (new[key] - old[key]), rtol=0, atol=1e-6)
    full = len(pack_state({k: v for k, v in new.items() if is_delta_key(k, v)}))
    assert package.nbytes < full


def test_a_device_given_another_sub_model_keeps_its_common_modules_and_gets_only_the_rest(tmp_path):
    cfg = config(tmp_path, delta_dtype="float32", first_delivery_dtype="float32", recalibrate_norms=False)
    cloud, mine, other = CloudService(cfg), EdgeService(cfg, 1), EdgeService(cfg, 0)
    mine.set_resources(Resources(params_fraction=0.45))
    ship(cloud, mine)
    ship(cloud, other)
    held, local = mine.spec, weights(mine)
    old = cloud.model.extract(held).state_dict()
    merge(cloud, (other, other.adapt()))
    mine.set_resources(Resources(params_fraction=0.6))  # the device now gets a wider sub-model
    package = ship(cloud, mine)
    _, _, meta = unpack_state(package.payload)
    common, fresh = split_spec(held, package.spec)
    assert package.spec != held and meta["kind"] == "respec" and meta["base_version"] == 0
    assert any(common.groups) and any(fresh.groups) and mine.version == cloud.version
    new = cloud.model.extract(package.spec).state_dict()
    now = weights(mine)
    where = Parts(groups=common.groups)
    keys = [k for k in new if is_delta_key(k, new[k]) and tensor_owner(cloud.model.layers, k) is not None]
    mine_before = take(local, cloud.model.layers, held, where, keys)
    change = {k: take(new, cloud.model.layers, package.spec, where, [k])[k] - take(old, cloud.model.layers, held,
                                                                                   where, [k])[k] for k in mine_before}
    for key, value in mine_before.items():  # the device's weights of its common modules plus the change
        got = take(now, cloud.model.layers, package.spec, where, [key])[key]
        torch.testing.assert_close(got, value + change[key], rtol=0, atol=1e-5)
    for key, value in take(new, cloud.model.layers, package.spec, fresh, keys).items():
        assert torch.equal(take(now, cloud.model.layers, package.spec, fresh, [key])[key], value)
    full = len(pack_state({k: v for k, v in new.items() if is_delta_key(k, v)}))
    assert package.nbytes < full
    assert mine.adapt().num_samples > 0  # it adapts the new sub-model as usual


def test_a_first_delivery_travels_as_float16_and_is_computed_in_float32(trio):
    cloud, edge, _ = trio
    package = ship(cloud, edge)
    wire = unpack_state(package.payload)[0]
    assert {v.dtype for k, v in wire.items() if is_delta_key(k, v)} == {torch.float16}
    assert all(v.dtype == torch.float32 for v in edge.model.parameters())
    exact = cloud.model.extract(edge.spec).state_dict()
    for key, value in weights(edge).items():
        if is_delta_key(key, value):
            torch.testing.assert_close(value, exact[key], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("damage", ["foreign module", "foreign row", "orphan scale", "wrong slice"])
def test_a_crafted_sparse_upload_is_rejected_and_the_cloud_is_untouched(trio, damage):
    cloud, edge, _ = trio
    ship(cloud, edge)
    upload = edge.adapt()
    wire, spec, meta = unpack_state(upload.payload)
    if damage == "foreign module":
        meta["groups"] = [list(range(9))] + meta["groups"][1:]
    elif damage == "foreign row":
        meta["rows"] = {k: [c for c in range(10) if c not in edge.classes][:3] for k in meta["rows"]}
    elif damage == "orphan scale":
        wire["stem" + SCALE_SUFFIX] = torch.ones(3)
    else:
        key = next(k for k in wire if k.endswith(".conv1.weight"))
        wire[key] = torch.cat([wire[key], wire[key]])
        wire[key + SCALE_SUFFIX] = torch.cat([wire[key + SCALE_SUFFIX]] * 2)
    upload = upload.model_copy(update={"payload": pack_state(wire, spec, meta)})
    digest = cloud.state_digest()
    report = merge(cloud, (edge, upload))
    assert report.decision == "reject" and report.rejected["d0"].startswith(("malformed upload", "integrity"))
    assert cloud.state_digest() == digest


def test_the_codec_residual_and_the_plan_survive_a_device_restart(tmp_path):
    cfg = config(tmp_path)
    cloud, edge = CloudService(cfg), EdgeService(cfg, 0, store_dir=tmp_path / "d0")
    ship(cloud, edge)
    edge.adapt()
    assert edge.exchange.residual  # int8 dropped something, kept for the next upload
    again = EdgeService(cfg, 0, store_dir=tmp_path / "d0")
    assert again.trainable == edge.trainable
    assert set(again.exchange.residual) == set(edge.exchange.residual)
    assert all(torch.equal(again.exchange.residual[k], v) for k, v in edge.exchange.residual.items())
    assert set(weights(again)) == set(weights(edge))


def test_a_local_swap_rederives_the_trainable_subset_within_the_new_memory(tmp_path):
    cfg = config(tmp_path, trainable_share=1.0)  # memory, not the share, bounds what is trained
    cloud, edge = CloudService(cfg), EdgeService(cfg, 0)
    ship(cloud, edge)
    held = edge.spec
    report = edge.shrink(Resources(memory_mb=3.65))
    assert report is not None and held.contains(edge.spec) and edge.spec != held
    assert edge.trainable is not None and edge.trainable.within(edge.spec)
    assert edge._memory().total(edge.costs, edge.spec, edge.trainable) <= 3.65 * 2**20
    upload = edge.adapt()  # still adapts, and uploads only what it now trains
    meta = unpack_state(upload.payload)[2]
    assert [tuple(g) for g in meta.get("groups", edge.spec.groups)] == list(edge.trainable.groups)


def test_an_int8_first_delivery_is_a_quarter_of_float32_and_close_to_the_cloud_weights(tmp_path):
    cfg = config(tmp_path, first_delivery_dtype="int8")
    cloud, edge = CloudService(cfg), EdgeService(cfg, 0)
    package = ship(cloud, edge)
    wire = unpack_state(package.payload)[0]
    exact = cloud.model.extract(edge.spec).state_dict()
    matrices = {k for k, v in exact.items() if is_delta_key(k, v) and v.ndim >= 2}
    assert matrices and all(wire[k].dtype == torch.int8 and k + SCALE_SUFFIX in wire for k in matrices)
    learned = sum(v.numel() for k, v in exact.items() if is_delta_key(k, v))
    assert len(package.payload) < 0.4 * 4 * learned  # int8 matrices, float16 vectors, scales, header
    assert all(v.dtype == torch.float32 for v in edge.model.parameters())
    for key, value in weights(edge).items():
        if key in matrices:  # within half a quantisation step of each row's scale
            step = exact[key].reshape(len(exact[key]), -1).abs().amax(1) / 127
            err = (value - exact[key]).reshape(len(value), -1).abs().amax(1)
            assert bool((err <= 0.5 * step + 1e-7).all()), key


def test_the_cache_headroom_is_what_the_plan_leaves_under_the_memory_limit(trio):
    cloud, limited, free = trio
    assert limited.cache_headroom() is None  # nothing installed yet
    ship(cloud, limited)
    ship(cloud, free)
    modelled = limited._memory().total(limited.costs, limited.spec, limited.trainable)
    assert limited.cache_headroom() == pytest.approx(4 * 2**20 - modelled) and limited.cache_headroom() >= 0
    assert free.cache_headroom() is None  # no memory limit: the frozen stages' output is always kept
