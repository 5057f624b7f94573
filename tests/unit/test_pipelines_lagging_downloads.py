"""Downloads that skip small module changes (``adaptation.download_min_change``), in-process.

A module whose change since the version a device holds of it is below the threshold is not
carried; the device reports it as lagging, and the cloud diffs that module against the version the
device holds of it, so small changes are delivered once they add up, or when that version is about
to be dropped. Changes here are made by scaling one module's weights, so each has a known
relative size.
"""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from eclm.campaign.messages import HeldModel, Resources
from eclm.config import PlatformConfig
from eclm.modules import unpack_state
from eclm.modules.deltas import learned_keys, sparse_download
from eclm.modules.merge import tensor_owner
from eclm.modules.sparse_delta import Parts, module_changes, put, take
from eclm.pipelines.cloud_service import CloudService
from eclm.pipelines.edge_service import EdgeService
from tests.unit.test_pipelines_exchange import ship, weights

torch.set_num_threads(1)


def config(tmp_path, **merge) -> PlatformConfig:
    return PlatformConfig.from_dict({
        "name": "lagging", "workdir": str(tmp_path),
        "data": {"source": "digits", "image_size": 16, "num_devices": 1, "classes_per_device": 3,
                 "samples_per_device": [30, 40]},
        "backbone": {"name": "resnet18", "kwargs": {"channels": [8, 8, 16, 16]}, "modules_per_layer": 2},
        "offline": {"epochs": 1, "enhance_epochs": 0},
        "devices": [{"name": "d0"}],
        # exact wire types, so a delivered change can be compared with the cloud's
        "adaptation": {"epochs": 1, "delta_dtype": "float32", "first_delivery_dtype": "float32",
                       "download_min_change": 0.05},
        "merge": {"keep_versions": 4} | merge,
        "tracking": {"enabled": False},
    })


def module_keys(cloud: CloudService, state) -> list[str]:
    rows = set(cloud._row_keys)
    return [k for k in learned_keys(state) if tensor_owner(cloud.model.layers, k) is not None and k not in rows]


def one_module(cloud: CloudService, spec, module: tuple[int, int]) -> Parts:
    return Parts(groups=tuple((module[1],) if i == module[0] else () for i in range(len(spec.groups))))


def slices(cloud: CloudService, state, spec, module: tuple[int, int]) -> dict:
    return take(state, cloud.model.layers, spec, one_module(cloud, spec, module), module_keys(cloud, state))


def new_version(cloud: CloudService, scale: dict[tuple[int, int], float]) -> None:
    """The next cloud version: each named module's weights multiplied by ``1 + scale``."""
    state, full = cloud.model.backbone.state_dict(), cloud.model.full_spec()
    for module, s in scale.items():
        change = {k: v * s for k, v in slices(cloud, state, full, module).items()}
        state = put(state, change, cloud.model.layers, full, one_module(cloud, full, module), differences=set(change))
    cloud.model.backbone.load_state_dict(state)
    cloud.version += 1
    cloud._remember_version()


@pytest.fixture()
def pair(tmp_path):
    cfg = config(tmp_path)
    cloud, edge = CloudService(cfg), EdgeService(cfg, 0)
    ship(cloud, edge)
    return cloud, edge


def modules_of(spec, layer: int) -> tuple[tuple[int, int], tuple[int, int]]:
    assert len(spec.groups[layer]) == 2, "the test needs a layer whose two modules the device holds"
    return (layer, spec.groups[layer][0]), (layer, spec.groups[layer][1])


def test_module_changes_are_the_norms_of_each_modules_slices(pair):
    cloud, edge = pair
    spec = edge.spec
    old = cloud.model.extract(spec).state_dict()
    torch.manual_seed(0)
    new = {k: v + torch.randn_like(v) * 0.01 if v.is_floating_point() else v for k, v in old.items()}
    changes = module_changes(new, old, cloud.model.layers, spec)
    assert set(changes) == {(i, m) for i, g in enumerate(spec.groups) for m in g}
    for module, (change, base) in changes.items():
        after, before = slices(cloud, new, spec, module), slices(cloud, old, spec, module)
        assert change == pytest.approx(sum(float((after[k] - before[k]).double().pow(2).sum()) for k in after))
        assert base == pytest.approx(sum(float(before[k].double().pow(2).sum()) for k in before))


def test_the_threshold_keeps_small_changes_back_unless_forced(pair):
    cloud, edge = pair
    spec = edge.spec
    big, small = modules_of(spec, 1)
    old = cloud.model.extract(spec).state_dict()
    new_version(cloud, {big: 0.2, small: 0.01})
    new = cloud.model.extract(spec).state_dict()
    layers, rows = cloud.model.layers, cloud._row_keys
    every, parts_all, none = sparse_download(new, old, layers, spec, rows)
    assert none == () and small[1] in parts_all.groups[1] and big[1] in parts_all.groups[1]
    diffs, parts, lagging = sparse_download(new, old, layers, spec, rows, min_change=0.05)
    assert lagging == (small,) and parts.groups[1] == (big[1],)
    assert sum(v.numel() for v in diffs.values()) < sum(v.numel() for v in every.values())
    _, forced, lagging = sparse_download(new, old, layers, spec, rows, min_change=0.05, force={small})
    assert lagging == () and forced.groups == parts_all.groups


def test_a_small_change_waits_until_the_changes_add_up(pair):
    cloud, edge = pair
    spec = edge.spec
    big, small = modules_of(spec, 1)
    v0 = weights(edge)
    new_version(cloud, {big: 0.2, small: 0.03})
    package = ship(cloud, edge)
    meta = unpack_state(package.payload)[2]
    assert meta["kind"] == "delta" and small[1] not in meta["groups"][1] and big[1] in meta["groups"][1]
    assert package.lagging == (small + (0,),) and edge.lagging == package.lagging
    assert edge.summary().held.lagging == package.lagging  # reported back to the cloud
    held = weights(edge)
    for key, value in slices(cloud, held, spec, small).items():  # the device kept its own values there
        assert torch.equal(value, slices(cloud, v0, spec, small)[key])
    v1 = cloud.model.extract(spec).state_dict()
    for key, value in slices(cloud, held, spec, big).items():
        torch.testing.assert_close(value, slices(cloud, v1, spec, big)[key])

    new_version(cloud, {small: 0.03})  # 1.03 * 1.03: 6.1% since version 0, above the threshold
    package = ship(cloud, edge)
    assert package.lagging == () and edge.lagging == ()
    assert small[1] in unpack_state(package.payload)[2]["groups"][1]
    v2 = cloud.model.extract(spec).state_dict()
    for key, value in slices(cloud, weights(edge), spec, small).items():  # the whole change since version 0
        torch.testing.assert_close(value, slices(cloud, v2, spec, small)[key])


def test_a_lagging_module_goes_before_the_version_it_lags_at_is_dropped(tmp_path):
    cfg = config(tmp_path, keep_versions=3)
    cloud, edge = CloudService(cfg), EdgeService(cfg, 0)
    ship(cloud, edge)
    spec = edge.spec
    big, small = modules_of(spec, 1)
    new_version(cloud, {small: 0.02})
    assert ship(cloud, edge).lagging == (small + (0,),)
    new_version(cloud, {big: 0.2})  # versions 0, 1, 2 kept: version 0 goes at the next merge
    package = ship(cloud, edge)
    assert package.lagging == () and small[1] in unpack_state(package.payload)[2]["groups"][1]
    v2 = cloud.model.extract(spec).state_dict()
    for key, value in slices(cloud, weights(edge), spec, small).items():
        torch.testing.assert_close(value, slices(cloud, v2, spec, small)[key])


def test_lagging_claims_the_cloud_cannot_use_count_as_the_held_version(tmp_path):
    cloud, edge = CloudService(config(tmp_path, keep_versions=2)), EdgeService(config(tmp_path, keep_versions=2), 0)
    ship(cloud, edge)
    spec = edge.spec
    big, small = modules_of(spec, 1)
    new_version(cloud, {big: 0.2})
    ship(cloud, edge)
    new_version(cloud, {small: 0.2})  # versions 1 and 2 kept
    summary = edge.summary()
    # modules the sub-model does not have, and a version the cloud no longer keeps: all ignored
    claims = ((0, 99, 0), (99, 0, 0), (big[0], big[1], 0))
    bogus = summary.model_copy(update={"held": HeldModel(spec=spec, version=1, lagging=claims)})
    (got, _, got_meta), (honest, _, meta) = (unpack_state(cloud.derive(s).payload) for s in (bogus, summary))
    assert got_meta == meta and got.keys() == honest.keys()
    assert all(torch.equal(got[k], honest[k]) for k in got)


def test_lagging_claims_are_bounded():
    spec = {"model_id": "m", "groups": [[0]]}
    with pytest.raises(ValidationError, match="below 2"):
        HeldModel(spec=spec, version=2, lagging=((0, 0, 2),))
    with pytest.raises(ValidationError, match="non-negative"):
        HeldModel(spec=spec, version=2, lagging=((0, -1, 0),))
    with pytest.raises(ValidationError, match="twice"):
        HeldModel(spec=spec, version=2, lagging=((0, 0, 0), (0, 0, 1)))
    with pytest.raises(ValidationError, match="at most 4096"):
        HeldModel(spec=spec, version=2, lagging=tuple((0, i, 0) for i in range(5000)))


def test_a_restarted_device_still_knows_what_lags(tmp_path):
    cfg = config(tmp_path)
    cloud, edge = CloudService(cfg), EdgeService(cfg, 0, store_dir=tmp_path / "store")
    ship(cloud, edge)
    big, small = modules_of(edge.spec, 1)
    new_version(cloud, {big: 0.2, small: 0.01})
    assert ship(cloud, edge).lagging == (small + (0,),)
    again = EdgeService(cfg, 0, store_dir=tmp_path / "store")
    assert again.lagging == edge.lagging and again.summary().held == edge.summary().held


def test_a_device_given_another_sub_model_gets_the_whole_change_of_its_lagging_modules(pair):
    cloud, edge = pair
    edge.set_resources(Resources(params_fraction=0.45))
    ship(cloud, edge)
    held = edge.spec
    small = {(i, m): 0.03 for i, g in enumerate(held.groups) for m in g if i in (1, 2)}
    new_version(cloud, small)
    lagging = ship(cloud, edge).lagging
    assert {(i, m) for i, m, _ in lagging} == set(small) and {v for *_, v in lagging} == {0}
    new_version(cloud, {module: 0.03 for module in small})  # 6.1% since the version held of them
    edge.set_resources(Resources(params_fraction=0.8))  # the device now gets a wider sub-model
    package = ship(cloud, edge)
    assert unpack_state(package.payload)[2]["kind"] == "respec" and package.lagging == ()
    kept = [m for m in small if m[1] in package.spec.groups[m[0]]]
    assert kept
    now, current = weights(edge), cloud.model.extract(package.spec).state_dict()
    for module in kept:  # the change since the version it held them from, not only the last one
        for key, value in slices(cloud, now, package.spec, module).items():
            torch.testing.assert_close(value, slices(cloud, current, package.spec, module)[key])
