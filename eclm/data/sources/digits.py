"""The default, embedded dataset: scikit-learn's handwritten digits.

The 1797 8x8 digits (pixel values 0..16) ship inside scikit-learn, so the platform always has real
data to run on with no download and no files. They are upsampled bilinearly to the configured size
(32x32 by default, the CIFAR resolution the backbones expect) and replicated to RGB by default.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from eclm.data.catalog import DIGITS_NUM_CLASSES
from eclm.data.labelled_images import LabelledImages
from eclm.data.sources.base import DatasetSource

# load_digits stores each pixel as an ink count in 0..16.
_DIGITS_MAX_VALUE = 16.0


class DigitsSource(DatasetSource):
    """scikit-learn ``load_digits``: 1797 samples, 10 classes, no network and no files.

    Args:
        image_size: Output height and width in pixels (default 32).
        channels: 1 (grey) or 3 (grey replicated to RGB, default).
    """

    def load(self) -> LabelledImages:
        """Load and upsample the digits.

        Returns:
            Images ``(1797, channels, image_size, image_size)`` in [0, 1], labels 0..9.
        """
        pixels, target = _digits_arrays()
        raw = pixels.reshape(-1, 8, 8).astype(np.float32) / _DIGITS_MAX_VALUE
        images = torch.from_numpy(raw).unsqueeze(1).clamp_(0.0, 1.0)
        labels = torch.from_numpy(target.astype(np.int64))
        names = [str(c) for c in range(DIGITS_NUM_CLASSES)]
        return self._finish(images, labels, DIGITS_NUM_CLASSES, names)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """``(pixels (1797, 64), labels (1797,))`` read from the CSV scikit-learn ships.

    The file is read directly (what ``sklearn.datasets.load_digits`` does), because importing
    scikit-learn costs about a second in every process that loads the data: the cloud and each
    device actor. If the file is not where scikit-learn keeps it, ``load_digits`` is used.
    """
    spec = importlib.util.find_spec("sklearn")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as f:
                data = np.loadtxt(f, delimiter=",")
            return data[:, :-1], data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.asarray(bunch.data), np.asarray(bunch.target, dtype=np.int64)
