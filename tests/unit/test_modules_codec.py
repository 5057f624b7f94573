"""Wire codecs of weight differences: int8 per output channel, float casts, exact fallback, error feedback."""

from __future__ import annotations

import pytest
import torch

from eclm.modules.codec import SCALE_SUFFIX, decode, encode
from eclm.modules.exchange import MalformedPayloadError, pack_state


def diffs(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    scale = torch.logspace(-4, -1, 16)[:, None, None, None]  # rows of very different magnitude
    return {"conv.weight": scale * torch.randn(16, 8, 3, 3, generator=gen),
            "fc.weight": 1e-2 * torch.randn(10, 32, generator=gen),
            "bn.bias": 1e-3 * torch.randn(16, generator=gen)}


def test_int8_is_per_row_within_half_a_step_and_a_quarter_of_the_bytes():
    d = diffs()
    wire, error = encode(d, "int8")
    assert wire["conv.weight"].dtype == torch.int8 and wire["conv.weight" + SCALE_SUFFIX].shape == (16,)
    decoded = decode(wire)
    for key in ("conv.weight", "fc.weight"):
        step = d[key].reshape(d[key].shape[0], -1).abs().amax(1) / 127
        err = (decoded[key] - d[key]).reshape(d[key].shape[0], -1).abs().amax(1)
        assert bool((err <= step / 2 + 1e-12).all())  # a row's error scales with that row, not the tensor
        torch.testing.assert_close(error[key], d[key] - decoded[key], rtol=0, atol=0)
    assert wire["bn.bias"].dtype == torch.float16  # a scale per element would cost more than it saves
    exact = len(pack_state(d))
    assert len(pack_state(wire)) < 0.33 * exact


@pytest.mark.parametrize("codec", ["float16", "bfloat16", "int8"])
def test_a_non_finite_difference_travels_exactly(codec):
    d = {"w": torch.tensor([[1e-3, float("nan")], [2e-3, 3e-3]])}
    wire, _ = encode(d, codec)
    assert wire["w"].dtype == torch.float32 and torch.isnan(decode(wire)["w"][0, 1])


def test_a_change_too_large_for_float16_travels_exactly():
    wire, error = encode({"b": torch.tensor([1e6, 0.5])}, "float16")
    assert wire["b"].dtype == torch.float32 and torch.equal(error["b"], torch.zeros(2))


def test_error_feedback_keeps_the_sum_of_what_was_sent_within_one_step():
    true_sum, sent_sum, residual = torch.zeros(16, 8, 3, 3), torch.zeros(16, 8, 3, 3), torch.zeros(16, 8, 3, 3)
    for cycle in range(20):
        d = diffs(cycle)["conv.weight"]
        wire, error = encode({"w": d + residual}, "int8")
        residual = error["w"]
        true_sum += d
        sent_sum += decode(wire)["w"]
    # without feedback the rounding errors of 20 cycles would add up; with it, what is missing is
    # only the last cycle's rounding
    torch.testing.assert_close(sent_sum + residual, true_sum, rtol=0, atol=1e-6)
    assert float((sent_sum - true_sum).abs().max()) <= float(diffs(19)["conv.weight"].abs().max()) / 127


@pytest.mark.parametrize("damage", ["orphan scale", "missing scale", "scale shape", "negative scale", "nan scale",
                                    "scale on float", "1-d int8"])
def test_malformed_encodings_are_refused(damage):
    wire, _ = encode(diffs(), "int8")
    key = "conv.weight"
    if damage == "orphan scale":
        wire["ghost" + SCALE_SUFFIX] = torch.ones(3)
    elif damage == "missing scale":
        del wire[key + SCALE_SUFFIX]
    elif damage == "scale shape":
        wire[key + SCALE_SUFFIX] = torch.ones(15)
    elif damage == "negative scale":
        wire[key + SCALE_SUFFIX] = -wire[key + SCALE_SUFFIX]
    elif damage == "nan scale":
        wire[key + SCALE_SUFFIX] = torch.full((16,), float("nan"))
    elif damage == "scale on float":
        wire["bn.bias" + SCALE_SUFFIX] = torch.ones(16)
    else:
        wire["bn.bias"], wire["bn.bias" + SCALE_SUFFIX] = torch.ones(16, dtype=torch.int8), torch.ones(16)
    with pytest.raises(MalformedPayloadError):
        decode(wire)
