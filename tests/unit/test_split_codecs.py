"""Smashed-activation codecs: exact sizes, round trips, MS spec, error ordering, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from eclm.split import (
    IdentityCodec,
    MaskEncodedSparsification,
    RandomizedTopKCodec,
    SmashedCodec,
    TopKCodec,
    UniformQuantizationCodec,
)
from eclm.split.codecs._bitpack import pack_codes, unpack_codes

SHAPES = [(4, 3, 5, 5), (2, 1000), (3, 7), (17,), ()]


def relu_activations(shape, seed: int = 0) -> torch.Tensor:
    return torch.relu(torch.randn(shape, generator=torch.Generator().manual_seed(seed)))


def rows_of(shape) -> tuple[int, int]:
    if len(shape) >= 2:
        return shape[0], math.prod(shape) // shape[0]
    return 1, math.prod(shape)


def keep(ratio: float, d: int) -> int:
    return max(1, math.floor((1 - ratio) * d + 1e-9))


CODEC_SIZES = [
    (lambda: IdentityCodec(), lambda r, d: r * d * 32),
    (lambda: TopKCodec(0.9), lambda r, d: r * (32 * keep(0.9, d) + d)),
    (lambda: RandomizedTopKCodec(0.8, seed=1), lambda r, d: r * (32 * keep(0.8, d) + d)),
    (lambda: UniformQuantizationCodec(3), lambda r, d: 64 + 3 * r * d),
    (lambda: MaskEncodedSparsification(0.99, 2), lambda r, d: r * (2 * d + 32 * keep(0.99, d))),
    (lambda: MaskEncodedSparsification(0.5, 5), lambda r, d: r * (5 * d + 32 * keep(0.5, d))),
]


@pytest.mark.parametrize(("make", "formula"), CODEC_SIZES)
@pytest.mark.parametrize("shape", SHAPES)
def test_size_bits_follow_the_layout_and_payload_is_really_packed(make, formula, shape) -> None:
    codec: SmashedCodec = make()
    x = relu_activations(shape)

    encoded = codec.encode(x)
    decoded = codec.decode(encoded)

    assert encoded.size_bits == formula(*rows_of(shape))
    # The payload holds exactly the counted bits, up to byte padding of each packed stream.
    assert 0 <= encoded.payload_bits - encoded.size_bits < 8 * len(encoded.payload)
    assert decoded.shape == x.shape and decoded.dtype == x.dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_identity_round_trip_is_exact(dtype: torch.dtype) -> None:
    x = torch.randn(3, 4, 5).to(dtype)

    decoded = IdentityCodec().decode(IdentityCodec().encode(x))

    assert torch.equal(decoded, x)


@pytest.mark.parametrize(
    "codec", [TopKCodec(0.9), MaskEncodedSparsification(0.9, 2), MaskEncodedSparsification(0.95, 4)]
)
def test_top_values_of_each_sample_are_kept_exactly(codec: SmashedCodec) -> None:
    x = torch.randn(6, 200)  # signed on purpose: selection is by magnitude
    k = keep(codec.ratio, 200)

    decoded = codec.decode(codec.encode(x))

    top = torch.topk(x.abs(), k, dim=1).indices
    assert torch.equal(decoded.gather(1, top), x.gather(1, top))
    if isinstance(codec, TopKCodec):
        assert int((decoded != 0).sum()) == 6 * k


def reference_ms_decode(x: np.ndarray, ratio: float, bits: int) -> np.ndarray:
    """The MS encoding (arXiv 2408.13787) written element by element, for one non-negative row."""
    d = x.size
    k = keep(ratio, d)
    order = np.argsort(-x, kind="stable")
    kept = set(order[:k].tolist())
    top_min = min(x[j] for j in kept)
    levels = 2**bits - 1
    out = np.empty(d)
    for j in range(d):
        if j in kept:
            out[j] = x[j]
        else:
            code = 0 if top_min == 0 else min(round(x[j] * levels / top_min), levels - 1)
            out[j] = code * top_min / levels
    return out


@pytest.mark.parametrize(("ratio", "bits"), [(0.99, 2), (0.9, 3), (0.7, 1), (0.5, 8)])
def test_mask_encoded_matches_the_reference_description(ratio: float, bits: int) -> None:
    x = relu_activations((5, 300), seed=4).double().float()
    codec = MaskEncodedSparsification(ratio, bits)

    decoded = codec.decode(codec.encode(x)).numpy()

    for row in range(5):
        np.testing.assert_allclose(
            decoded[row], reference_ms_decode(x[row].numpy(), ratio, bits), rtol=1e-6, atol=1e-7
        )


def test_mask_encoded_one_bit_is_top_k() -> None:
    x = relu_activations((4, 250), seed=2)

    ms = MaskEncodedSparsification(0.9, 1)
    topk = TopKCodec(0.9)

    assert torch.equal(ms.decode(ms.encode(x)), topk.decode(topk.encode(x)))
    assert ms.encode(x).size_bits == topk.encode(x).size_bits


@pytest.mark.parametrize(
    ("shape", "tolerance"),
    [((8, 25, 8, 8), 1e-12), ((8, 64, 8, 8), 0.01)],  # 1600 per sample exact; 4096 floors k
)
def test_mask_encoded_paper_operating_point_is_2_32_bits_per_element(shape, tolerance: float) -> None:
    x = relu_activations(shape, seed=1)

    encoded = MaskEncodedSparsification(0.99, 2).encode(x)

    assert encoded.size_bits / x.numel() == pytest.approx(2.32, abs=tolerance)
    assert 1 - encoded.size_bits / (32 * x.numel()) == pytest.approx(0.9275, abs=tolerance / 32)


@pytest.mark.parametrize(("ratio", "bits"), [(0.99, 2), (0.95, 2), (0.9, 3), (0.98, 4)])
def test_mask_encoded_beats_top_k_at_equal_or_smaller_budget(ratio: float, bits: int) -> None:
    x = relu_activations((16, 512), seed=5)
    ms = MaskEncodedSparsification(ratio, bits)
    ms_encoded = ms.encode(x)
    # Give top-k at least the same number of bits: 32k + d >= MS size per row.
    ms_bits_per_row = ms_encoded.size_bits / 16
    topk_ratio = 1 - math.ceil((ms_bits_per_row - 512) / 32) / 512
    topk = TopKCodec(topk_ratio)
    topk_encoded = topk.encode(x)

    ms_error = float(((ms.decode(ms_encoded) - x) ** 2).mean())
    topk_error = float(((topk.decode(topk_encoded) - x) ** 2).mean())

    assert topk_encoded.size_bits >= ms_encoded.size_bits
    assert ms_error < topk_error


def test_mask_encoded_signed_inputs_carry_signs() -> None:
    x = torch.randn(4, 400, generator=torch.Generator().manual_seed(0))
    k = keep(0.9, 400)

    auto = MaskEncodedSparsification(0.9, 3).encode(x)
    decoded = MaskEncodedSparsification(0.9, 3).decode(auto)

    assert auto.header["signed"] is True
    assert auto.size_bits == 4 * (400 * 3 + 32 * k + (400 - k))
    assert bool((decoded * x >= 0).all())  # never the wrong sign
    assert float(((decoded - x) ** 2).mean()) < 0.05 * float((x**2).mean())
    with pytest.raises(ValueError, match="negative"):
        MaskEncodedSparsification(0.9, 3, signed=False).encode(x)


def test_mask_encoded_all_zero_rows_decode_to_zero() -> None:
    x = torch.zeros(3, 50)
    x[1, 7] = 2.0

    codec = MaskEncodedSparsification(0.9, 2)

    assert torch.equal(codec.decode(codec.encode(x)), x)


def test_uniform_quantization_error_is_at_most_half_a_step() -> None:
    x = torch.randn(8, 100, generator=torch.Generator().manual_seed(3))
    codec = UniformQuantizationCodec(4)

    decoded = codec.decode(codec.encode(x))

    step = float(x.max() - x.min()) / 15
    assert float((decoded - x).abs().max()) <= step / 2 + 1e-6
    assert torch.equal(codec.decode(codec.encode(torch.full((2, 3), 1.5))), torch.full((2, 3), 1.5))


def test_randomized_top_k_is_seeded_and_prefers_large_values() -> None:
    x = torch.linspace(0.01, 1.0, 100).repeat(400, 1)  # 400 samples of the same row

    first = RandomizedTopKCodec(0.9, seed=11)
    second = RandomizedTopKCodec(0.9, seed=11)
    decoded = first.decode(first.encode(x))

    assert torch.equal(decoded, second.decode(second.encode(x)))
    kept = decoded != 0
    assert torch.equal(decoded[kept], x[kept])  # kept values are exact
    frequency = kept.float().mean(dim=0)
    assert float(frequency[-10:].mean()) > 3 * float(frequency[:10].mean())
    assert 0 < float(frequency[:50].sum())  # small values are sometimes chosen, unlike top-k


@pytest.mark.parametrize(
    "codec",
    [
        IdentityCodec(),
        TopKCodec(0.9),
        RandomizedTopKCodec(0.9),
        UniformQuantizationCodec(2),
        MaskEncodedSparsification(0.99, 2),
    ],
)
def test_straight_through_gradient_equals_upstream_gradient(codec: SmashedCodec) -> None:
    x = torch.randn(4, 3, 6, 6, requires_grad=True)
    upstream = torch.randn(4, 3, 6, 6)

    compressed, encoded = codec.roundtrip(x)
    (compressed * upstream).sum().backward()

    assert torch.equal(x.grad, upstream)
    assert torch.equal(compressed.detach(), codec.decode(encoded))
    assert codec.compress(x).requires_grad


@pytest.mark.parametrize("bits", [1, 2, 3, 7, 8, 11, 16])
def test_bit_packing_round_trip(bits: int) -> None:
    codes = torch.randint(0, 2**bits, (1001,), generator=torch.Generator().manual_seed(bits))

    packed = pack_codes(codes, bits)

    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(1001 * bits / 8)
    assert torch.equal(unpack_codes(packed, bits, 1001), codes)


def test_codecs_reject_bad_input() -> None:
    with pytest.raises(TypeError, match="floating-point"):
        TopKCodec(0.5).encode(torch.arange(10))
    with pytest.raises(ValueError, match="NaN"):
        IdentityCodec().encode(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="empty"):
        IdentityCodec().encode(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="cannot decode"):
        TopKCodec(0.5).decode(IdentityCodec().encode(torch.ones(2, 2)))


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: TopKCodec(1.0), "ratio"),
        (lambda: TopKCodec(-0.1), "ratio"),
        (lambda: MaskEncodedSparsification(0.9, 0), "bits"),
        (lambda: MaskEncodedSparsification(0.9, 17), "bits"),
        (lambda: UniformQuantizationCodec(2.5), "bits"),
        (lambda: MaskEncodedSparsification(0.9, 2, signed="yes"), "signed"),
    ],
)
def test_codec_parameters_are_validated(factory, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        factory()


@pytest.mark.parametrize(
    ("codec", "bits"),
    [
        (IdentityCodec(), 32.0),
        (TopKCodec(0.99), 1.32),
        (MaskEncodedSparsification(0.99, 2), 2.32),
        (UniformQuantizationCodec(3), 3.0),
    ],
)
def test_nominal_bits_and_compression_ratio(codec: SmashedCodec, bits: float) -> None:
    assert codec.nominal_bits_per_element() == pytest.approx(bits)
    assert codec.compression_ratio() == pytest.approx(32 / bits)
