"""Wire codecs of stage-to-stage messages: exact, bounded error, bytes; no Ray."""

import numpy as np
import pytest
import torch

from eclm.serving import WIRE_RATIO, decode, encode


@pytest.mark.parametrize("codec,rel_error", [("float32", 0.0), ("float16", 1e-3), ("int8", None)])
def test_codecs_shrink_the_payload_and_bound_the_error(codec, rel_error):
    x = torch.randn(4, 16, 8, 8, generator=torch.Generator().manual_seed(0)) * 3
    message = encode(x, codec, batch_id=7)
    y = decode(message)
    assert y.dtype == torch.float32 and y.shape == x.shape and message.batch_id == 7
    assert message.nbytes == pytest.approx(x.numel() * 4 * WIRE_RATIO[codec])
    if rel_error is None:
        # int8: per-tensor affine, at most half a quantisation step off.
        assert (y - x).abs().max() <= message.scale / 2 + 1e-6
        assert message.scale == pytest.approx(float(x.max() - x.min()) / 255)
    elif rel_error == 0.0:
        assert torch.equal(y, x)
    else:
        assert ((y - x).abs() <= rel_error * x.abs() + 1e-7).all()


def test_float16_clamps_values_beyond_its_range_instead_of_sending_inf():
    x = torch.tensor([[1e6, -1e6, 1.0]])
    y = decode(encode(x, "float16"))
    assert torch.isfinite(y).all() and y[0, 0] == float(torch.finfo(torch.float16).max) and y[0, 2] == 1.0


def test_decoding_a_read_only_array_gives_a_writable_copy():
    message = encode(torch.ones(2, 3))
    message.data.setflags(write=False)  # as Ray's object store hands it over
    y = decode(message)
    y += 1  # blocks may work in place
    assert float(y.sum()) == 12.0 and np.all(message.data == 1.0)


def test_constant_tensors_and_bad_inputs():
    assert torch.equal(decode(encode(torch.full((3,), 2.5), "int8")), torch.full((3,), 2.5))
    with pytest.raises(ValueError, match="codec"):
        encode(torch.ones(1), "bf8")
    with pytest.raises(ValueError, match="float"):
        encode(torch.ones(1, dtype=torch.int64))

