"""Dataset sources: shapes, ranges, layouts, and clear errors for missing or malformed inputs."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eclm.data import (
    DataConfig,
    DigitsSource,
    ImageFolderSource,
    LabelledImages,
    NpzSource,
    TorchvisionSource,
    build_source,
)


def test_importing_the_data_layer_does_not_import_ray() -> None:
    code = "import eclm.data, sys; assert 'ray' not in sys.modules; assert 'mlflow' not in sys.modules"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2]
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("image_size", "channels"), [(32, 3), (16, 1), (8, 3)])
def test_digits_shape_range_and_classes(image_size: int, channels: int) -> None:
    data = DigitsSource(image_size=image_size, channels=channels).load()

    assert data.images.shape == (1797, channels, image_size, image_size)
    assert data.images.dtype == torch.float32 and data.labels.dtype == torch.int64
    assert 0.0 <= float(data.images.min()) and float(data.images.max()) <= 1.0
    assert float(data.images.max()) > 0.9  # scaled to use the range, not left at 0..1/16
    assert data.num_classes == 10 and len(data.class_names) == 10
    assert set(data.labels.tolist()) == set(range(10))
    if channels == 3:  # grey replicated to RGB
        assert torch.equal(data.images[:, 0], data.images[:, 2])


def test_digits_read_directly_equal_scikit_learns_loader_without_importing_it() -> None:
    code = ("import sys; from eclm.data.sources.digits import _digits_arrays; x, y = _digits_arrays(); "
            "assert 'sklearn' not in sys.modules; import numpy as np; from sklearn.datasets import load_digits; "
            "b = load_digits(); assert np.array_equal(x, b.data) and np.array_equal(y, b.target)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stderr


def _write_npz(path: Path, layout: str, dtype: str, count: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(count, 3, 16, 16), dtype=np.uint8)
    stored = pixels if layout == "nchw" else pixels.transpose(0, 2, 3, 1)
    stored = stored.astype(np.float32) / 255.0 if dtype == "float" else stored
    labels = rng.integers(0, 4, size=count)
    labels[0] = 3  # make the class count known
    np.savez(path, x=stored, y=labels)
    return pixels, labels


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", ["uint8", "float"])
def test_npz_round_trip_detects_layout(tmp_path: Path, layout: str, dtype: str) -> None:
    pixels, labels = _write_npz(tmp_path / "set.npz", layout, dtype)

    data = NpzSource(tmp_path / "set.npz", image_size=16, channels=3).load()

    assert data.images.shape == (12, 3, 16, 16)
    torch.testing.assert_close(data.images, torch.from_numpy(pixels).float() / 255.0)
    assert data.labels.tolist() == labels.tolist()
    assert data.num_classes == 4


def test_npz_resizes_and_converts_grey(tmp_path: Path) -> None:
    np.savez(tmp_path / "grey.npz", img=np.full((5, 10, 10), 200, dtype=np.uint8), lab=np.arange(5))

    data = NpzSource(tmp_path / "grey.npz", "img", "lab", image_size=32, channels=3).load()

    assert data.images.shape == (5, 3, 32, 32)
    torch.testing.assert_close(data.images, torch.full_like(data.images, 200 / 255))


@pytest.mark.parametrize(
    ("arrays", "kwargs", "message"),
    [
        ({"x": np.zeros((4, 3, 8, 8)), "y": np.zeros(4)}, {"images_key": "images"}, "images_key='images'"),
        ({"x": np.zeros((4, 3, 8, 8)), "y": np.zeros(4)}, {"labels_key": "labels"}, "labels_key='labels'"),
        ({"x": np.zeros((4, 3, 8, 8)), "y": np.zeros(5)}, {}, "5 entries but there are 4 images"),
        ({"x": np.zeros((4, 3, 3, 3)), "y": np.zeros(4)}, {}, "NCHW or NHWC"),
        ({"x": -np.ones((4, 3, 8, 8)), "y": np.zeros(4)}, {}, "[0, 1] or [0, 255]"),
        ({"x": np.zeros((4, 3, 8, 8)), "y": np.full(4, 0.5)}, {}, "whole numbers"),
    ],
)
def test_npz_bad_content_raises_a_clear_error(
    tmp_path: Path, arrays: dict, kwargs: dict, message: str
) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)

    with pytest.raises(ValueError) as error:
        NpzSource(tmp_path / "bad.npz", **kwargs).load()

    assert message in str(error.value)


def test_npz_refuses_pickled_arrays(tmp_path: Path) -> None:
    np.savez(tmp_path / "obj.npz", x=np.array([object()] * 4, dtype=object), y=np.zeros(4))

    with pytest.raises(ValueError, match="pickle"):
        NpzSource(tmp_path / "obj.npz").load()


def _write_image_folder(root: Path, counts: dict[str, int]) -> None:
    for index, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for item in range(count):
            colour = (40 * index, 255 - 40 * index, 10 * item)
            Image.new("RGB", (20 + item, 12), colour).save(root / name / f"{item}.png")


@pytest.mark.parametrize("channels", [1, 3])
def test_image_folder_reads_classes_from_subfolders(tmp_path: Path, channels: int) -> None:
    _write_image_folder(tmp_path, {"cat": 3, "ant": 2, "dog": 4})

    data = ImageFolderSource(tmp_path, image_size=24, channels=channels).load()

    assert data.class_names == ("ant", "cat", "dog")  # sorted folder names
    assert data.images.shape == (9, channels, 24, 24)
    assert data.class_counts().tolist() == [2, 3, 4]
    assert 0.0 <= float(data.images.min()) and float(data.images.max()) <= 1.0
    if channels == 3:  # "ant" images are (40, 215, ...) in RGB
        torch.testing.assert_close(
            data.images[0, :2, 5, 5], torch.tensor([40 / 255, 215 / 255]), atol=2e-3, rtol=0
        )


def test_image_folder_empty_class_is_an_error(tmp_path: Path) -> None:
    _write_image_folder(tmp_path, {"a": 2})
    (tmp_path / "empty").mkdir()

    with pytest.raises(ValueError, match="empty"):
        ImageFolderSource(tmp_path).load()


@pytest.mark.parametrize(
    "make_source",
    [
        lambda missing: NpzSource(missing / "data.npz"),
        lambda missing: ImageFolderSource(missing),
        lambda missing: TorchvisionSource("CIFAR10", missing),
    ],
)
def test_missing_path_is_named_in_file_not_found(tmp_path: Path, make_source) -> None:
    missing = tmp_path / "nowhere"

    with pytest.raises(FileNotFoundError) as error:
        make_source(missing).load()

    assert str(missing) in str(error.value)


@pytest.mark.parametrize("name", ["MNIST", "cifar10", "Fashion-MNIST", "SVHN"])
def test_torchvision_missing_files_say_downloads_are_disabled(tmp_path: Path, name: str) -> None:
    with pytest.raises(FileNotFoundError) as error:
        TorchvisionSource(name, tmp_path).load()  # root exists but holds no dataset

    assert str(tmp_path) in str(error.value)
    assert "downloads are disabled" in str(error.value)
    assert not any(tmp_path.iterdir())  # nothing was fetched or created


def _write_fake_mnist(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """MNIST's raw idx files (big-endian header + uint8 payload), as torchvision expects them on disk."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        header = struct.pack(">iiii", 2051, len(images), 28, 28)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.astype(np.uint8).tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">ii", 2049, len(labels)) + labels.astype(np.uint8).tobytes()
        )


@pytest.mark.parametrize("train", [True, False])
def test_torchvision_reads_a_dataset_already_on_disk(tmp_path: Path, train: bool) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(6, 28, 28))
    labels = np.array([0, 1, 2, 3, 4, 9])
    _write_fake_mnist(tmp_path, pixels, labels)

    data = TorchvisionSource("mnist", tmp_path, train=train, image_size=28, channels=1).load()

    assert data.images.shape == (6, 1, 28, 28) and data.num_classes == 10
    assert data.labels.tolist() == labels.tolist()
    torch.testing.assert_close(data.images[:, 0], torch.from_numpy(pixels).float() / 255.0)


def test_torchvision_unknown_name_lists_supported() -> None:
    with pytest.raises(ValueError, match="CIFAR10"):
        TorchvisionSource("ImageNet-22k", "/tmp")


def test_build_source_follows_the_config(tmp_path: Path) -> None:
    np.savez(tmp_path / "s.npz", a=np.zeros((6, 8, 8, 3), dtype=np.uint8), b=np.arange(6) % 3)
    cfg = DataConfig(
        source="npz", path=tmp_path / "s.npz", images_key="a", labels_key="b", image_size=12, channels=1
    )

    data = build_source(cfg).load()

    assert isinstance(build_source(cfg), NpzSource)
    assert data.images.shape == (6, 1, 12, 12) and data.num_classes == 3
    assert isinstance(build_source(DataConfig()), DigitsSource)


@pytest.mark.parametrize(
    ("images", "labels", "error"),
    [
        (torch.zeros(2, 1, 4, 4, dtype=torch.float64), torch.zeros(2, dtype=torch.int64), TypeError),
        (torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int32), TypeError),
        (torch.zeros(2, 4, 4), torch.zeros(2, dtype=torch.int64), ValueError),
        (torch.full((2, 1, 4, 4), 1.5), torch.zeros(2, dtype=torch.int64), ValueError),
        (torch.zeros(2, 1, 4, 4), torch.tensor([0, 5]), ValueError),
    ],
)
def test_labelled_images_rejects_invalid_tensors(
    images: torch.Tensor, labels: torch.Tensor, error: type
) -> None:
    with pytest.raises(error):
        LabelledImages(images, labels, 2, ("a", "b"))
