"""The default, embedded dataset: scikit-learn's handwritten digits.

The 1797 8x8 digits (pixel values 0..16) ship inside scikit-learn, so the platform always has real
data to run on with no download and no files. They are upsampled bilinearly to the configured size
(32x32 by default, the CIFAR resolution the backbones expect) and replicated to RGB by default.
"""

from __future__ import annotations

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
        # Imported here so that importing eclm.data stays cheap.
        from sklearn.datasets import load_digits

        bunch = load_digits()
        raw = np.asarray(bunch.images, dtype=np.float32) / _DIGITS_MAX_VALUE
        images = torch.from_numpy(raw).unsqueeze(1).clamp_(0.0, 1.0)
        labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
        names = [str(int(name)) for name in bunch.target_names]
        return self._finish(images, labels, DIGITS_NUM_CLASSES, names)
