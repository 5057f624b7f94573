"""Corruptions: range and shape kept, distortion grows with severity, deterministic, validated."""

from __future__ import annotations

import pytest
import torch

from eclm.data import CORRUPTIONS, DigitsSource, apply_corruption

DISTORTING = sorted(name for name in CORRUPTIONS if name != "none")


@pytest.fixture(scope="module")
def clean() -> torch.Tensor:
    return DigitsSource(image_size=32, channels=3).load().images[:48]


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
@pytest.mark.parametrize("severity", [1, 3, 5])
def test_corruption_keeps_shape_dtype_and_range(clean: torch.Tensor, name: str, severity: int) -> None:
    before = clean.clone()

    out = apply_corruption(clean, name, severity, _generator())

    assert out.shape == clean.shape and out.dtype == clean.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.equal(clean, before)  # the input is not modified in place


@pytest.mark.parametrize("name", DISTORTING)
def test_distortion_grows_with_severity(clean: torch.Tensor, name: str) -> None:
    distortion = [
        float((apply_corruption(clean, name, severity, _generator()) - clean).abs().mean())
        for severity in range(1, 6)
    ]

    assert distortion[0] > 0.0
    assert all(later > earlier for earlier, later in zip(distortion, distortion[1:], strict=False)), (
        distortion
    )


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_same_generator_seed_gives_identical_output(clean: torch.Tensor, name: str) -> None:
    first = apply_corruption(clean, name, 4, _generator(11))
    second = apply_corruption(clean, name, 4, _generator(11))

    assert torch.equal(first, second)


def test_none_is_the_identity(clean: torch.Tensor) -> None:
    assert torch.equal(apply_corruption(clean, "none", 5), clean)


@pytest.mark.parametrize("name", ["gaussian_noise", "rotation"])
def test_random_corruptions_depend_on_the_generator(clean: torch.Tensor, name: str) -> None:
    outputs = [apply_corruption(clean, name, 3, _generator(seed)) for seed in range(4)]

    assert any(not torch.equal(outputs[0], other) for other in outputs[1:])


@pytest.mark.parametrize("shape", [(0, 3, 16, 16), (2, 1, 7, 9), (1, 3, 32, 32)])
@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corruptions_handle_odd_shapes(shape: tuple[int, ...], name: str) -> None:
    images = torch.rand(shape, generator=_generator())

    out = apply_corruption(images, name, 5, _generator())

    assert out.shape == images.shape


def test_unknown_corruption_lists_valid_names() -> None:
    with pytest.raises(ValueError) as error:
        apply_corruption(torch.zeros(1, 1, 8, 8), "fog", 1)

    assert "fog" in str(error.value)
    assert all(name in str(error.value) for name in CORRUPTIONS)


@pytest.mark.parametrize(
    ("severity", "error"), [(0, ValueError), (6, ValueError), (2.0, ValueError), (True, ValueError)]
)
def test_bad_severity_is_rejected(severity: object, error: type) -> None:
    with pytest.raises(error, match="severity"):
        apply_corruption(torch.zeros(1, 1, 8, 8), "contrast", severity)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("images", "error"),
    [(torch.zeros(1, 8, 8), ValueError), (torch.zeros(1, 1, 8, 8, dtype=torch.int64), TypeError)],
)
def test_bad_images_are_rejected(images: torch.Tensor, error: type) -> None:
    with pytest.raises(error):
        apply_corruption(images, "brightness", 1)
