"""Module-sparse deltas: carrying a subset of modules and classifier rows, exactly."""

from __future__ import annotations

import pytest
import torch

from eclm.modules import SubModelSpec, modularize
from eclm.modules.deltas import apply_wire_delta, learned_keys, rebase_upload, sparse_download
from eclm.modules.exchange import MalformedPayloadError
from eclm.modules.merge import tensor_owner
from eclm.modules.sparse_delta import Parts, changed_parts, put, take


@pytest.fixture(scope="module")
def model():
    return modularize("resnet18", modules_per_layer=2, num_classes=10, channels=(8, 8, 16, 16))


def sub_state(model, spec, seed=0, scale=0.0):
    state = model.extract(spec).state_dict()
    gen = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
            for k, v in state.items()}


def test_a_change_to_some_modules_and_rows_is_found_and_carried_alone(model):
    spec = model.full_spec()
    old = sub_state(model, spec)
    new = dict(old)
    layer = model.layers[3]
    key = f"{layer.name}.conv1.weight"  # rows of module 1 of layer 3 only
    rows = layer.owner_within("conv1.weight", list(spec.groups[3])) == 1
    new[key] = old[key].clone()
    new[key][rows] += 0.5
    new["fc.weight"] = old["fc.weight"].clone()
    new["fc.weight"][[2, 7]] += 1.0
    parts, whole = changed_parts(new, old, model.layers, spec, ["fc.weight", "fc.bias"])
    assert parts.groups == tuple(((1,) if i == 3 else ()) for i in range(len(spec.groups)))
    assert dict(parts.rows) == {"fc.weight": (2, 7), "fc.bias": (2, 7)} and whole == set()
    diffs, _, _ = sparse_download(new, old, model.layers, spec, ["fc.weight", "fc.bias"])
    assert {tensor_owner(model.layers, k)[0] for k in diffs if tensor_owner(model.layers, k)} == {3}
    assert diffs["fc.weight"].shape == (2, old["fc.weight"].shape[1])
    # what arrives, added to the old state, is exactly the new state
    arrived = apply_wire_delta(old, diffs, parts.to_meta(), model.layers, spec, ["fc.weight", "fc.bias"])
    assert all(torch.equal(arrived[k], new[k]) for k in learned_keys(new))


def test_take_and_put_are_inverse_on_a_partial_spec(model):
    spec = SubModelSpec(model_id=model.model_id, groups=[(0, 1), (1,), (0,), (0, 1), (1,), (0, 1), (0,), (1,)])
    base, moved = sub_state(model, spec), sub_state(model, spec, seed=1, scale=1.0)
    parts = Parts(groups=[(1,), (), (0,), (0,), (), (1,), (), (1,)], rows={"fc.weight": (0, 3)})
    keys = [k for k in base if base[k].is_floating_point()]
    carried = take(moved, model.layers, spec, parts, keys)
    out = put(base, carried, model.layers, spec, parts, differences=set())
    for key in keys:
        back = take(out, model.layers, spec, parts, [key])
        if key in back:  # the carried part is the moved one, the rest is the base
            assert torch.equal(back[key], carried[key])
    untouched = put(base, {}, model.layers, spec, parts, differences=set())
    assert all(untouched[k] is base[k] for k in base)


def test_rebased_sparse_upload_holds_only_carried_modules_and_the_whole_classifier(model):
    spec = model.full_spec()
    current = sub_state(model, spec)
    parts = Parts(groups=[(1,), (), (), (), (), (), (), (0,)], rows={"fc.weight": (4,), "fc.bias": (4,)})
    keys = [k for k in current if k in learned_keys(current) and
            (k.startswith("fc.") or (tensor_owner(model.layers, k) or (None,))[0] in (0, 7))]
    wire = {k: torch.full_like(v, 0.25) for k, v in take(current, model.layers, spec, parts, keys).items()}
    state, got = rebase_upload(current, wire, parts.to_meta(), model.layers, spec, ["fc.weight", "fc.bias"])
    assert got.groups == parts.groups
    assert state["fc.weight"].shape == current["fc.weight"].shape  # the classifier whole, one row moved
    changed_rows = (state["fc.weight"] != current["fc.weight"]).any(1).nonzero().flatten().tolist()
    assert changed_rows == [4]
    key = f"{model.layers[0].name}.conv1.weight"
    assert state[key].shape[0] == int((model.layers[0].owner_within("conv1.weight", [0, 1]) == 1).sum())


@pytest.mark.parametrize("meta", [
    {"groups": [[5]] + [[]] * 7},              # a module the sub-model does not hold
    {"groups": [[]] * 3},                       # wrong number of layers
    {"groups": [[]] * 8, "rows": {"fc.weight": [10]}},  # a class that does not exist
    {"groups": [[]] * 8, "rows": {"layer1.0.conv1.weight": [0]}},  # rows of a tensor that is not the classifier
    {"groups": "all"},
])
def test_a_malformed_sparse_header_is_refused(model, meta):
    spec = SubModelSpec(model_id=model.model_id, groups=[(0,)] * 8)
    with pytest.raises(MalformedPayloadError):
        Parts.from_meta(meta, spec, {"fc.weight": 10, "fc.bias": 10})


def test_a_tensor_of_a_layer_without_carried_modules_is_refused(model):
    spec = model.full_spec()
    base = sub_state(model, spec)
    parts = Parts(groups=[(0,)] + [()] * 7)
    key = f"{model.layers[2].name}.conv1.weight"
    with pytest.raises(MalformedPayloadError, match="carries no module"):
        put(base, {key: base[key]}, model.layers, spec, parts, differences={key})
