"""Lossless wire compression of payloads: exact round trips, smaller weights, bounded inflation."""

from __future__ import annotations

import struct
import zlib

import pytest
import torch

from eclm.modules.exchange import MalformedPayloadError, pack_state, read_header, unpack_state
from eclm.modules.wire_compression import (
    MAGIC,
    MAX_INFLATED_BYTES,
    deflate_payload,
    inflate_payload,
    is_compressed,
)


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """Trained-looking tensors of every dtype a payload carries."""
    g = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": (torch.randn(32, 16, 3, 3, generator=g) * 0.05).half(),
        "fc.weight": torch.randn(10, 64, generator=g) * 0.1,
        "delta.q": torch.randint(-127, 128, (64, 32), generator=g, dtype=torch.int8),
        "bn.running_var": torch.rand(32, generator=g, dtype=torch.float64),
        "bn.num_batches_tracked": torch.tensor(7),
        "empty": torch.zeros(0, 4),
    }


def test_round_trip_is_bit_exact_for_every_dtype() -> None:
    state = _weights()
    plain = pack_state(state, meta={"version": 3})
    packed = pack_state(state, meta={"version": 3}, compression="deflate")
    assert is_compressed(packed) and not is_compressed(plain)
    assert len(inflate_payload(packed)) == len(plain)  # the same safetensors payload comes back
    back, spec, meta = unpack_state(packed)
    assert spec is None and meta == {"version": 3}
    assert set(back) == set(state)
    for key, tensor in state.items():
        assert back[key].dtype == tensor.dtype and torch.equal(back[key], tensor)
    assert read_header(packed) == read_header(plain)


def test_compressed_bytes_do_not_depend_on_header_order() -> None:
    # safetensors writes metadata keys and tensor entries in hash order; the envelope must not vary
    state = {f"t{i}": torch.full((4,), float(i)) for i in range(16)}
    envelopes = {pack_state(state, meta={"v": 1}, compression="deflate") for _ in range(8)}
    assert len(envelopes) == 1


def test_plain_payloads_pass_through_unchanged() -> None:
    plain = pack_state(_weights())
    assert inflate_payload(plain) is plain


def test_float16_weights_shrink_and_shuffling_beats_plain_deflate() -> None:
    g = torch.Generator().manual_seed(1)
    state = {f"w{i}": (torch.randn(128, 256, generator=g) * 0.02).half() for i in range(4)}
    plain = pack_state(state)
    packed = pack_state(state, compression="deflate")
    assert len(packed) < 0.95 * len(plain)
    # the byte-plane shuffle is what makes float16 compress: DEFLATE alone saves less
    assert len(packed) < len(MAGIC) + 8 + len(zlib.compress(plain, 6))


def test_unknown_compression_is_rejected() -> None:
    with pytest.raises(ValueError, match="compression"):
        pack_state(_weights(), compression="lz4")


def _envelope(declared: int, stream: bytes) -> bytes:
    return MAGIC + struct.pack("<Q", declared) + stream


@pytest.mark.parametrize("make", [
    lambda plain, packed: packed[:12],  # truncated envelope
    lambda plain, packed: _envelope(MAX_INFLATED_BYTES + 1, b""),  # declares too much
    lambda plain, packed: packed[:16] + b"\x00" * 20,  # corrupt stream
    lambda plain, packed: _envelope(len(plain) - 1, packed[16:]),  # inflates past its declaration
    lambda plain, packed: _envelope(len(plain) + 5, packed[16:]),  # inflates short of it
    lambda plain, packed: packed + b"trailing",  # bytes after the stream
    lambda plain, packed: _envelope(9, zlib.compress(b"\x01" + b"\x00" * 8)),  # not safetensors inside
])
def test_malformed_envelopes_are_refused_with_a_clear_error(make) -> None:
    plain = pack_state(_weights())
    packed = deflate_payload(plain)
    with pytest.raises(MalformedPayloadError):
        unpack_state(make(plain, packed))


def test_a_small_bomb_cannot_inflate_past_its_declaration() -> None:
    # 64 MiB of zeros DEFLATE to ~64 kB; declared as 1 kB it is refused after at most 1 kB + 1.
    stream = zlib.compress(b"\x00" * (64 << 20), 9)
    with pytest.raises(MalformedPayloadError, match="declared"):
        inflate_payload(_envelope(1024, stream))


def test_tensor_offsets_outside_the_data_are_refused() -> None:
    header = b'{"t":{"dtype":"F32","shape":[4],"data_offsets":[0,64]}}'
    raw = struct.pack("<Q", len(header)) + header + b"\x00" * 16
    with pytest.raises(MalformedPayloadError, match="do not fit"):
        deflate_payload(raw)
    with pytest.raises(MalformedPayloadError, match="do not fit"):
        inflate_payload(_envelope(len(raw), zlib.compress(raw)))
