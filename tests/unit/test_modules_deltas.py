"""Weight deltas (the ``delta`` exchange): exact round trips, statistics handling, malformed input."""

from __future__ import annotations

import pytest
import torch

from eclm.modules import modularize
from eclm.modules.deltas import apply_delta, is_delta_key, state_delta
from eclm.modules.exchange import MalformedPayloadError, pack_state, unpack_state


@pytest.fixture(scope="module")
def states():
    model = modularize("resnet18", modules_per_layer=2, num_classes=10, channels=(8, 8, 16, 16))
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    after = {k: (v + 0.01 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v + 3)
             for k, v in before.items()}
    return before, after


def test_learned_weights_travel_as_differences_statistics_absolute(states):
    before, after = states
    delta = state_delta(after, before)
    assert set(delta) == set(after)
    for key, value in delta.items():
        if is_delta_key(key, after[key]):
            torch.testing.assert_close(value, after[key] - before[key], rtol=0, atol=0)
        else:  # BatchNorm running statistics and integer buffers are data, sent as they are
            assert torch.equal(value, after[key])
    assert any(k.endswith("running_var") for k in delta) and any(k.endswith("num_batches_tracked") for k in delta)


def test_download_deltas_leave_statistics_out(states):
    before, after = states
    delta = state_delta(after, before, statistics=False)
    assert all(is_delta_key(k, after[k]) for k in delta)
    assert not any(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in delta)


def test_round_trip_restores_the_newer_state_through_safetensors(states):
    before, after = states
    delta, _, _ = unpack_state(pack_state(state_delta(after, before)))
    restored = apply_delta(before, delta)
    for key in after:
        torch.testing.assert_close(restored[key], after[key], rtol=0, atol=1e-6)
        assert restored[key].dtype == after[key].dtype


def test_partial_download_keeps_the_bases_statistics(states):
    before, after = states
    restored = apply_delta(before, state_delta(after, before, statistics=False))
    for key in before:
        if is_delta_key(key, before[key]):
            torch.testing.assert_close(restored[key], after[key], rtol=0, atol=1e-6)
        else:
            assert restored[key] is before[key]


def test_base_is_not_modified(states):
    before, after = states
    snapshot = {k: v.clone() for k, v in before.items()}
    apply_delta(before, state_delta(after, before))
    assert all(torch.equal(before[k], snapshot[k]) for k in before)


@pytest.mark.parametrize("damage", ["unknown", "missing", "shape", "dtype"])
def test_malformed_deltas_are_refused_with_the_tensor_named(states, damage):
    before, after = states
    delta = state_delta(after, before)
    key = "fc.weight"
    if damage == "unknown":
        delta["evil.weight"] = torch.zeros(2)
        match = "evil.weight"
    elif damage == "missing":
        del delta[key]
        match = key
    elif damage == "shape":
        delta[key] = delta[key][:1]
        match = key
    else:
        delta[key] = delta[key].double()
        match = key
    with pytest.raises(MalformedPayloadError, match=match):
        apply_delta(before, delta)


def test_states_with_different_layouts_cannot_be_diffed(states):
    before, after = states
    with pytest.raises(ValueError, match="keys"):
        state_delta({k: v for k, v in after.items() if k != "fc.bias"}, before)
    with pytest.raises(ValueError, match="fc.weight"):
        state_delta(after | {"fc.weight": after["fc.weight"][:2]}, before)
