"""Splitting one labelled set into the cloud's proxy data and the devices' label-skewed pools.

The setting follows the ECLM/Nebula experiments (ECLM, arXiv 2311.11083; docs/architecture.md): a ``cloud_fraction`` (30%) of
the training set is the cloud's proxy data, the rest belongs to the devices, and each device sees a
label-skewed slice of it (``m`` of ``n`` classes, or class proportions drawn from a Dirichlet) with
50-150 local samples.

How the pieces are cut (all cuts are per class, so every part keeps the class balance):

1. Each class's samples are shuffled; ``cloud_fraction`` of them go to the cloud, the rest to the
   *device reservoir*. The cloud part is cut again into proxy-train and proxy-val.
2. The device reservoir is cut into a *device train reservoir* and a *device test reservoir*
   (``test_fraction`` held out). Holding the test data out globally, not per device, means no
   device ever trains on an image another device is tested on.
3. A device's pool is every train-reservoir sample of its classes; its held-out pool is every
   test-reservoir sample of its classes. Devices therefore **share** the reservoir: two devices with
   a common class may hold the same image. This is deliberate: 500 devices x 150 samples would not
   fit into 70% of CIFAR-10 otherwise, and it matches sampling devices from one population.
   Cloud and device data never overlap, and train and test data never overlap.
4. A device's local training set size ``n`` is drawn uniformly from ``samples_per_device`` and capped
   at its pool size. Local sets never contain an image twice; when a pool is scarce the stream
   (``device_stream.py``) re-uses images across steps rather than within one set. A pool smaller
   than the minimum size is an error, not a silent shrink.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from eclm.data.labelled_images import LabelledImages

# Dirichlet draws give every class a positive but often vanishing share; shares below this are
# dropped so a device's class subset lists only classes it will actually see.
_MIN_DIRICHLET_WEIGHT = 1e-3


@dataclass(frozen=True, eq=False)
class CloudData:
    """The cloud's proxy data.

    Attributes:
        train: Proxy training set (offline stage).
        val: Proxy validation set (merge validation, early stopping); may be empty.
        train_indices: Rows of ``train`` in the full dataset, ``int64``.
        val_indices: Rows of ``val`` in the full dataset, ``int64``.
    """

    train: LabelledImages
    val: LabelledImages
    train_indices: np.ndarray
    val_indices: np.ndarray


@dataclass(frozen=True, eq=False)
class DevicePool:
    """What one device may draw its local data from.

    Attributes:
        device_id: Index of the device, ``0..num_devices-1``.
        classes: The device's classes (sorted); its label skew.
        class_weights: Share of each class in the device's draws, length ``num_classes`` of the
            dataset, sums to 1, zero outside ``classes``.
        train_indices: Rows of the full dataset the device may train on (sorted ``int64``).
        test_indices: Held-out rows of its classes for evaluation (sorted ``int64``).
        local_size: Size ``n`` of the device's local training set.
    """

    device_id: int
    classes: tuple[int, ...]
    class_weights: tuple[float, ...]
    train_indices: np.ndarray
    test_indices: np.ndarray
    local_size: int

    def to_dict(self) -> dict[str, Any]:
        """Plain ints/floats/lists, e.g. to ship a pool to another process or log it."""
        return {
            "device_id": self.device_id,
            "classes": list(self.classes),
            "class_weights": list(self.class_weights),
            "train_indices": self.train_indices.tolist(),
            "test_indices": self.test_indices.tolist(),
            "local_size": self.local_size,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> DevicePool:
        """Inverse of :meth:`to_dict`."""
        return cls(
            device_id=int(state["device_id"]),
            classes=tuple(int(c) for c in state["classes"]),
            class_weights=tuple(float(w) for w in state["class_weights"]),
            train_indices=np.asarray(state["train_indices"], dtype=np.int64),
            test_indices=np.asarray(state["test_indices"], dtype=np.int64),
            local_size=int(state["local_size"]),
        )


class DataSplit(NamedTuple):
    """Result of :func:`split_cloud_and_devices`; unpacks as ``cloud, devices``."""

    cloud: CloudData
    devices: list[DevicePool]


def split_cloud_and_devices(
    data: LabelledImages,
    *,
    num_devices: int,
    classes_per_device: int | None = None,
    dirichlet_alpha: float | None = None,
    cloud_fraction: float = 0.3,
    cloud_val_fraction: float = 0.2,
    samples_per_device: tuple[int, int] = (50, 150),
    test_fraction: float = 0.2,
    seed: int = 0,
) -> DataSplit:
    """Cut ``data`` into cloud proxy data and one label-skewed pool per device (see module docstring).

    Args:
        data: The full labelled set.
        num_devices: Number of device pools to build (>= 1).
        classes_per_device: ``m``: each device gets ``m`` distinct classes, dealt from shuffled decks
            of all classes so every class is used by about the same number of devices. Exclusive
            with ``dirichlet_alpha``.
        dirichlet_alpha: Concentration of a symmetric Dirichlet over classes per device (smaller is
            more skewed). Exclusive with ``classes_per_device``.
        cloud_fraction: Share of each class given to the cloud, in (0, 1).
        cloud_val_fraction: Share of the cloud part held out as proxy validation, in [0, 1).
        samples_per_device: Inclusive ``(min, max)`` local training set size.
        test_fraction: Share of the device reservoir held out for device evaluation, in [0, 1).
        seed: Seed of every random choice; equal seeds give equal splits.

    Returns:
        ``DataSplit(cloud, devices)`` with ``len(devices) == num_devices``.

    Raises:
        ValueError: For out-of-range arguments, neither or both skew options, more classes per device
            than classes present, or a device pool smaller than ``samples_per_device[0]``.
    """
    _check_arguments(num_devices, classes_per_device, dirichlet_alpha, cloud_fraction, cloud_val_fraction,
                     samples_per_device, test_fraction, seed)
    rng = np.random.default_rng(seed)
    labels = data.labels.numpy()
    cloud_train, cloud_val, device_train, device_test = _cut_each_class(
        rng, labels, data.num_classes, cloud_fraction, cloud_val_fraction, test_fraction)
    available = [c for c in range(data.num_classes) if len(device_train[c]) > 0]
    if classes_per_device is not None:
        if classes_per_device > len(available):
            raise ValueError(
                f"classes_per_device={classes_per_device} exceeds the {len(available)} classes with device data "
                f"(num_classes={data.num_classes})"
            )
        weights = _dealt_class_weights(rng, available, data.num_classes, num_devices, classes_per_device)
    else:
        assert dirichlet_alpha is not None
        weights = _dirichlet_class_weights(rng, available, data.num_classes, num_devices, dirichlet_alpha)
    reservoirs = (np.sort(np.concatenate(device_train)), np.sort(np.concatenate(device_test)))
    devices = [_device_pool(rng, labels, device_id, w, reservoirs, samples_per_device)
               for device_id, w in enumerate(weights)]
    cloud_train_idx, cloud_val_idx = np.sort(np.concatenate(cloud_train)), np.sort(np.concatenate(cloud_val))
    cloud = CloudData(data.subset(cloud_train_idx), data.subset(cloud_val_idx), cloud_train_idx, cloud_val_idx)
    return DataSplit(cloud, devices)


def _cut_each_class(rng: np.random.Generator, labels: np.ndarray, num_classes: int, cloud_fraction: float,
                    cloud_val_fraction: float, test_fraction: float) -> tuple[list, list, list, list]:
    """Per class: ``(cloud train, cloud val, device train, device test)`` index arrays."""
    cloud_train, cloud_val, device_train, device_test = [], [], [], []
    for label in range(num_classes):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_cloud = int(round(cloud_fraction * len(members)))
        cloud, rest = members[:n_cloud], members[n_cloud:]
        n_val = int(round(cloud_val_fraction * len(cloud)))
        n_test = int(round(test_fraction * len(rest)))
        cloud_val.append(cloud[:n_val])
        cloud_train.append(cloud[n_val:])
        device_test.append(rest[:n_test])
        device_train.append(rest[n_test:])
    return cloud_train, cloud_val, device_train, device_test


def _device_pool(rng: np.random.Generator, labels: np.ndarray, device_id: int, weights: np.ndarray,
                 reservoirs: tuple[np.ndarray, np.ndarray], samples_per_device: tuple[int, int]) -> DevicePool:
    """One device's pool: the reservoir samples of its classes and its local training set size."""
    train_reservoir, test_reservoir = reservoirs
    low, high = samples_per_device
    classes = tuple(int(c) for c in np.flatnonzero(weights > 0))
    train_pool = train_reservoir[np.isin(labels[train_reservoir], classes)]
    test_pool = test_reservoir[np.isin(labels[test_reservoir], classes)]
    if len(train_pool) < low:
        raise ValueError(
            f"device {device_id} (classes {list(classes)}) has only {len(train_pool)} training samples but "
            f"samples_per_device min is {low}; lower samples_per_device, cloud_fraction or test_fraction, "
            f"or give devices more classes"
        )
    local_size = min(int(rng.integers(low, high + 1)), len(train_pool))
    return DevicePool(device_id, classes, tuple(float(w) for w in weights), train_pool, test_pool, local_size)


def _dealt_class_weights(
    rng: np.random.Generator, available: list[int], num_classes: int, num_devices: int, per_device: int
) -> list[np.ndarray]:
    """Uniform weights over ``per_device`` distinct classes per device, dealt from shuffled decks."""
    deck: list[int] = []
    result = []
    for _ in range(num_devices):
        chosen: list[int] = []
        while len(chosen) < per_device:
            pick = next((c for c in deck if c not in chosen), None)
            if pick is None:
                # A fresh full deck always holds a class not yet chosen, since per_device <= len(available).
                deck.extend(int(c) for c in rng.permutation(available))
                continue
            deck.remove(pick)
            chosen.append(pick)
        weights = np.zeros(num_classes)
        weights[chosen] = 1.0 / per_device
        result.append(weights)
    return result


def _dirichlet_class_weights(
    rng: np.random.Generator, available: list[int], num_classes: int, num_devices: int, alpha: float
) -> list[np.ndarray]:
    """Per-device class shares drawn from ``Dir(alpha, ..., alpha)`` over the available classes."""
    result = []
    for _ in range(num_devices):
        shares = rng.dirichlet(np.full(len(available), alpha))
        shares[shares < _MIN_DIRICHLET_WEIGHT] = 0.0
        if shares.sum() == 0:  # every share vanished (tiny alpha): keep the largest one
            shares[int(np.argmax(rng.dirichlet(np.full(len(available), alpha))))] = 1.0
        weights = np.zeros(num_classes)
        weights[available] = shares / shares.sum()
        result.append(weights)
    return result


def _check_arguments(
    num_devices: int,
    classes_per_device: int | None,
    dirichlet_alpha: float | None,
    cloud_fraction: float,
    cloud_val_fraction: float,
    samples_per_device: tuple[int, int],
    test_fraction: float,
    seed: int,
) -> None:
    if not isinstance(num_devices, (int, np.integer)) or num_devices < 1:
        raise ValueError(f"num_devices must be a positive int, got {num_devices!r}")
    if (classes_per_device is None) == (dirichlet_alpha is None):
        raise ValueError(
            "give exactly one of classes_per_device and dirichlet_alpha, got "
            f"classes_per_device={classes_per_device!r}, dirichlet_alpha={dirichlet_alpha!r}"
        )
    if classes_per_device is not None and (
        not isinstance(classes_per_device, (int, np.integer)) or classes_per_device < 1
    ):
        raise ValueError(f"classes_per_device must be a positive int, got {classes_per_device!r}")
    if dirichlet_alpha is not None and not (dirichlet_alpha > 0 and np.isfinite(dirichlet_alpha)):
        raise ValueError(f"dirichlet_alpha must be a positive finite number, got {dirichlet_alpha!r}")
    if not 0.0 < cloud_fraction < 1.0:
        raise ValueError(f"cloud_fraction must be in (0, 1), got {cloud_fraction!r}")
    if not 0.0 <= cloud_val_fraction < 1.0:
        raise ValueError(f"cloud_val_fraction must be in [0, 1), got {cloud_val_fraction!r}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    if len(samples_per_device) != 2 or not 1 <= samples_per_device[0] <= samples_per_device[1]:
        raise ValueError(
            f"samples_per_device must be (min, max) with 1 <= min <= max, got {samples_per_device!r}"
        )
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
