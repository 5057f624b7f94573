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


@pytest.mark.parametrize("wire", [torch.float16, torch.bfloat16])
def test_narrow_wire_type_halves_the_differences_and_keeps_the_change(states, wire):
    before, after = states
    exact, narrow = state_delta(after, before), state_delta(after, before, dtype=wire)
    learned = [k for k, v in after.items() if is_delta_key(k, v)]
    for key in learned:
        assert narrow[key].dtype == wire
        assert narrow[key].element_size() * 2 == exact[key].element_size()
    for key in set(after) - set(learned):  # statistics and integer buffers are never narrowed
        assert narrow[key].dtype == after[key].dtype and torch.equal(narrow[key], exact[key])
    restored = apply_delta(before, unpack_state(pack_state(narrow))[0])
    tolerance = {torch.float16: 1e-3, torch.bfloat16: 8e-3}[wire]  # relative to the change, not the weight
    for key in learned:
        assert restored[key].dtype == before[key].dtype
        change = (after[key] - before[key]).abs()
        assert ((restored[key] - after[key]).abs() <= tolerance * change + 1e-7).all(), key


def test_narrow_wire_type_shrinks_the_payload(states):
    before, after = states
    full = len(pack_state(state_delta(after, before, statistics=False)))
    half = len(pack_state(state_delta(after, before, statistics=False, dtype=torch.float16)))
    assert 0.45 < half / full < 0.55


def test_a_change_too_large_for_float16_travels_exactly(states):
    before, after = states
    huge = dict(after, **{"fc.weight": before["fc.weight"] + 1e6})
    delta = state_delta(huge, before, dtype=torch.float16)
    assert delta["fc.weight"].dtype == torch.float32 and torch.isfinite(delta["fc.weight"]).all()
    assert delta["fc.bias"].dtype == torch.float16
    torch.testing.assert_close(apply_delta(before, delta)["fc.weight"], huge["fc.weight"])


def test_a_narrow_type_is_refused_for_absolute_tensors(states):
    before, after = states
    delta = state_delta(after, before)
    stat = next(k for k, v in after.items() if v.is_floating_point() and not is_delta_key(k, v))
    delta[stat] = delta[stat].half()
    with pytest.raises(MalformedPayloadError, match=stat):
        apply_delta(before, delta)


def test_wire_types_match_the_config_choices():
    from typing import get_args

    from eclm.config import AdaptationConfig
    from eclm.modules.codec import CODECS

    assert set(get_args(AdaptationConfig.model_fields["delta_dtype"].annotation)) == set(CODECS)
