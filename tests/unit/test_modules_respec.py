"""Respec payloads: a device moving to another sub-model keeps its common modules and gets the rest."""

from __future__ import annotations

import pytest
import torch

from eclm.modules import SubModelSpec, modularize
from eclm.modules.deltas import first_delivery, learned_keys
from eclm.modules.exchange import MalformedPayloadError, pack_state, payload_size
from eclm.modules.merge import is_norm_statistic, tensor_owner
from eclm.modules.respec import FRESH_PREFIX, apply_respec, respec_download, split_spec
from eclm.modules.sparse_delta import Parts, take

ROWS = ("fc.weight", "fc.bias")


@pytest.fixture(scope="module")
def model():
    return modularize("resnet18", modules_per_layer=2, num_classes=10, channels=(8, 8, 16, 16))


def spec_of(model, groups):
    return SubModelSpec(model_id=model.model_id, groups=groups)


def moved(state, seed, scale):
    gen = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone()
            for k, v in state.items()}


# held: layer 6 becomes a residual module in the new spec, layer 1 was one in the held spec
HELD = [(0, 1), (), (0,), (0, 1), (1,), (0, 1), (0,), (1,)]
NEW = [(0,), (1,), (0, 1), (1,), (0,), (0, 1), (), (0, 1)]


def cloud_versions(model, held, new, *, change_scale=0.05):
    """``(old backbone state, new backbone state)``: the cloud before and after a merge."""
    old = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    return old, moved(old, seed=1, scale=change_scale)


def sub(model, spec, backbone_state):
    return model.extract(spec, backbone_state).state_dict()


def install(model, held, new, held_state, wire, meta):
    template = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in model.extract(new).state_dict().items()}
    return apply_respec(held_state, held, new, wire, meta, model.layers, ROWS, template)


def test_split_spec_names_the_shared_and_the_new_modules(model):
    common, fresh = split_spec(spec_of(model, HELD), spec_of(model, NEW))
    assert common.groups == ((0,), (), (0,), (1,), (), (0, 1), (), (1,))
    assert fresh.groups == ((), (1,), (1,), (), (0,), (), (), (0,))
    other = modularize("resnet18", modules_per_layer=2, num_classes=10, channels=(8, 8, 16, 32))
    with pytest.raises(ValueError, match="different modular models"):
        split_spec(spec_of(model, HELD), spec_of(other, NEW))


def test_a_device_without_local_change_gets_the_cloud_sub_model(model):
    held, new = spec_of(model, HELD), spec_of(model, NEW)
    old_b, new_b = cloud_versions(model, held, new)
    wire, meta = respec_download(sub(model, new, new_b), sub(model, held, old_b), model.layers, new, held, ROWS,
                                 delta_dtype="float32", first_dtype="float32")
    state = install(model, held, new, sub(model, held, old_b), wire, meta)
    want = sub(model, new, new_b)
    assert set(state) == set(want)
    common, fresh = split_spec(held, new)
    for key, value in want.items():
        assert value.shape == state[key].shape and value.dtype == state[key].dtype
        if key in learned_keys(want):
            torch.testing.assert_close(state[key], value, rtol=0, atol=1e-5)
    # norm statistics: the device's own for what it kept, the cloud's for fresh modules
    stats = [k for k in want if is_norm_statistic(k) and want[k].is_floating_point()
             and tensor_owner(model.layers, k) is not None]
    fresh_stats = take(want, model.layers, new, fresh, stats)
    assert fresh_stats and all(torch.equal(take(state, model.layers, new, fresh, [k])[k], v)
                               for k, v in fresh_stats.items())
    kept = take(sub(model, held, old_b), model.layers, held, Parts(groups=common.groups), stats)
    assert kept and all(torch.equal(take(state, model.layers, new, Parts(groups=common.groups), [k])[k], v)
                        for k, v in kept.items())


def test_the_local_adaptation_of_common_modules_survives_and_fresh_modules_are_the_clouds(model):
    held, new = spec_of(model, HELD), spec_of(model, NEW)
    old_b, new_b = cloud_versions(model, held, new)
    cloud_old = sub(model, held, old_b)
    local = moved(cloud_old, seed=7, scale=0.1)  # the device's own adaptation
    wire, meta = respec_download(sub(model, new, new_b), cloud_old, model.layers, new, held, ROWS,
                                 delta_dtype="float32", first_dtype="float32")
    state = install(model, held, new, local, wire, meta)
    common, fresh = split_spec(held, new)
    where = Parts(groups=common.groups)
    keys = [k for k in learned_keys(state) if tensor_owner(model.layers, k) is not None]
    mine, now, before = (take(s, model.layers, sp, where, keys)
                         for s, sp in ((local, held), (sub(model, new, new_b), new), (cloud_old, held)))
    for key in mine:  # device weights + the cloud's change
        got = take(state, model.layers, new, where, [key])[key]
        torch.testing.assert_close(got, mine[key] + (now[key] - before[key]), rtol=0, atol=1e-5)
    for key, value in take(sub(model, new, new_b), model.layers, new, fresh, keys).items():
        assert torch.equal(take(state, model.layers, new, fresh, [key])[key], value)
    for key in ROWS:  # tensors outside modules keep the local change too
        torch.testing.assert_close(state[key], local[key] + (new_b[key] - old_b[key]), rtol=0, atol=1e-5)
    net = model.extract(new)
    net.load_state_dict(state)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_a_respec_costs_less_than_a_first_delivery_when_most_modules_stay(model):
    held = spec_of(model, [(0, 1)] * 7 + [(0,)])
    new = spec_of(model, [(0, 1)] * 8)
    old_b, new_b = cloud_versions(model, held, new)
    for name in [k for k in new_b if k.startswith("layer1.")]:  # the merge left layer 1 alone
        new_b[name] = old_b[name].clone()
    wire, meta = respec_download(sub(model, new, new_b), sub(model, held, old_b), model.layers, new, held, ROWS,
                                 delta_dtype="int8", first_dtype="float16")
    first = first_delivery(sub(model, new, new_b), "float16")
    assert payload_size(wire) < 0.5 * payload_size(first)
    assert not any(k.startswith("layer1.") for k in wire)  # unchanged shared modules do not travel
    assert any(k.startswith(FRESH_PREFIX + "layer4.1.") for k in wire)  # the new module of the last layer does
    state = install(model, held, new, sub(model, held, old_b), wire, meta)
    err = max(float((state[k] - v).abs().max()) for k, v in sub(model, new, new_b).items()
              if k in learned_keys(state))
    assert err < 0.01  # int8 change + float16 fresh weights
    assert len(pack_state(wire, new, meta)) < len(pack_state(first, new))


def test_a_payload_for_another_held_sub_model_or_missing_parts_is_refused(model):
    held, new = spec_of(model, HELD), spec_of(model, NEW)
    old_b, new_b = cloud_versions(model, held, new)
    held_state = sub(model, held, old_b)
    wire, meta = respec_download(sub(model, new, new_b), held_state, model.layers, new, held, ROWS,
                                 delta_dtype="float16", first_dtype="float16")
    other = spec_of(model, [(0, 1)] * 8)
    with pytest.raises(MalformedPayloadError, match="another held sub-model"):
        install(model, other, new, sub(model, other, old_b), wire, meta)
    missing = {k: v for k, v in wire.items() if not k.startswith(FRESH_PREFIX + "layer4.1.")}
    with pytest.raises(MalformedPayloadError, match="unset"):
        install(model, held, new, held_state, missing, meta)
    bad = dict(wire)
    key = next(k for k in wire if k.startswith(FRESH_PREFIX) and wire[k].dim() > 1)
    bad[key] = wire[key][:1]
    with pytest.raises(MalformedPayloadError):
        install(model, held, new, held_state, bad, meta)
