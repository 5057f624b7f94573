"""One device's data over time: a local training set that drifts with its environment.

A :class:`DeviceStream` starts (step 0) with ``n = pool.local_size`` samples drawn from the device's
pool under the first environment. Each :meth:`DeviceStream.step` advances time by one step and
replaces a share (``replace_fraction``, 50% in ECLM) of the local set, chosen at random, with fresh
samples drawn under the environment of the new step. Kept samples keep the corruption they arrived
with, so after an environment change the local set mixes old and new conditions, as a real device's
recent data would.

Drawing rules (never the same image twice in one local set):

1. Fresh samples come from the pool's images of the environment's classes that are not in the local
   set, weighted so the expected class mix follows the pool's ``class_weights``.
2. If those run out (a scarce class, or a class-shifted environment with few images), the rest come
   from the device's other classes not in the local set.
3. If the pool is still too small (pool size close to ``n``), the images just removed are drawn
   again under the new environment. Images therefore recur *across* steps, never within a set.

Everything random is derived from ``(seed, device_id, step)``, and each sample's corruption from
``(seed, device_id, step it arrived, image index)``. The state (:meth:`DeviceStream.state_dict`) is
just the step index and the local ``(index, arrival step)`` pairs, so another process holding the
same dataset, pool and schedule reproduces the stream exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from eclm.data.corruptions import apply_corruption
from eclm.data.drift import DriftSchedule, Environment
from eclm.data.labelled_images import LabelledImages
from eclm.data.partition import DevicePool

# Distinguish the random streams derived from one (seed, device, step) so they are independent.
_TAG_REPLACE, _TAG_TEST, _TAG_CORRUPT = 0, 1, 2


class DeviceStream:
    """The drifting local data of one device.

    Args:
        data: The full dataset the pool indexes into.
        pool: The device's pool (from :func:`~eclm.data.partition.split_cloud_and_devices`).
        schedule: The device's environments over time.
        replace_fraction: Share of the local set replaced at each step, in (0, 1].
        test_size: Cap on the held-out test set size per environment (``None``: all held-out
            images of the environment's classes).
        seed: Seed of the stream (sampling and corruption noise).

    Raises:
        ValueError: For a bad ``replace_fraction``/``test_size``/``seed``, or a pool whose indices
            do not fit ``data`` or that is smaller than its ``local_size``.
    """

    def __init__(
        self,
        data: LabelledImages,
        pool: DevicePool,
        schedule: DriftSchedule,
        *,
        replace_fraction: float = 0.5,
        test_size: int | None = None,
        seed: int = 0,
    ) -> None:
        if not 0.0 < replace_fraction <= 1.0:
            raise ValueError(f"replace_fraction must be in (0, 1], got {replace_fraction!r}")
        if test_size is not None and test_size < 1:
            raise ValueError(f"test_size must be None or >= 1, got {test_size!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        for name, indices in (("train_indices", pool.train_indices), ("test_indices", pool.test_indices)):
            if len(indices) and (indices.min() < 0 or indices.max() >= len(data)):
                raise ValueError(
                    f"pool.{name} of device {pool.device_id} index outside the dataset of {len(data)}"
                )
        if len(pool.train_indices) < pool.local_size:
            raise ValueError(
                f"device {pool.device_id}: pool holds {len(pool.train_indices)} images, fewer than local_size "
                f"{pool.local_size}"
            )
        self.data = data
        self.pool = pool
        self.schedule = schedule
        self.replace_fraction = replace_fraction
        self.test_size = test_size
        self.seed = seed
        self._labels = data.labels.numpy()
        self._class_weights = np.asarray(pool.class_weights, dtype=np.float64)
        self.step_index = 0
        self._local_indices: list[int] = []
        self._local_steps: list[int] = []
        self._image_cache: dict[tuple[int, int], torch.Tensor] = {}
        self._test_cache: dict[int, LabelledImages] = {}
        initial = self._draw(self._rng(0, _TAG_REPLACE), pool.local_size, set(), [], self.environment)
        self._local_indices, self._local_steps = initial, [0] * len(initial)

    # ----------------------------------------------------------------------------------- time
    @property
    def environment(self) -> Environment:
        """The environment at the current step."""
        return self.schedule.environment_at(self.step_index)

    @property
    def segment_index(self) -> int:
        """The schedule segment (period of one environment) of the current step."""
        return self.schedule.segment_of(self.step_index)

    @property
    def local_size(self) -> int:
        """Size ``n`` of the local training set."""
        return len(self._local_indices)

    @property
    def replace_count(self) -> int:
        """How many local samples each :meth:`step` replaces: ``round(replace_fraction * n)``, at least 1."""
        return min(self.local_size, max(1, int(round(self.replace_fraction * self.local_size))))

    def step(self) -> Environment:
        """Advance one time step and replace :attr:`replace_count` local samples.

        Returns:
            The environment of the new step.
        """
        self.step_index += 1
        environment = self.environment
        rng = self._rng(self.step_index, _TAG_REPLACE)
        dropped = set(rng.choice(self.local_size, size=self.replace_count, replace=False).tolist())
        removed = [index for pos, index in enumerate(self._local_indices) if pos in dropped]
        kept = [(index, step) for pos, (index, step) in enumerate(self.local_entries()) if pos not in dropped]
        fresh = self._draw(rng, len(removed), set(self._local_indices), removed, environment)
        for pos in sorted(dropped):
            self._image_cache.pop((self._local_indices[pos], self._local_steps[pos]), None)
        self._local_indices = [index for index, _ in kept] + fresh
        self._local_steps = [step for _, step in kept] + [self.step_index] * len(fresh)
        return environment

    # ----------------------------------------------------------------------------------- data
    def local_entries(self) -> list[tuple[int, int]]:
        """The local set as ``(dataset index, arrival step)`` pairs, in storage order."""
        return list(zip(self._local_indices, self._local_steps, strict=True))

    def train_set(self) -> LabelledImages:
        """The current local training set, each image corrupted by the environment it arrived in.

        Returns:
            ``n`` images ``(n, C, H, W)`` and their labels.
        """
        images = torch.stack([self._corrupted(index, step) for index, step in self.local_entries()])
        labels = self.data.labels[torch.as_tensor(self._local_indices, dtype=torch.int64)]
        return LabelledImages(images, labels, self.data.num_classes, self.data.class_names)

    def test_set(self) -> LabelledImages:
        """Held-out images of the current environment's classes, corrupted by the current environment.

        The set is fixed for the whole segment (same images, same noise), so accuracies within a
        segment are comparable. It may be empty if the device has no held-out images.
        """
        return self._segment_test_set(self.segment_index)

    def previous_test_set(self) -> LabelledImages | None:
        """The test set of the previous segment's environment (to measure forgetting), ``None`` in segment 0."""
        segment = self.segment_index
        return None if segment == 0 else self._segment_test_set(segment - 1)

    # ----------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The stream's state as plain ints and lists (JSON/pickle friendly)."""
        return {
            "device_id": self.pool.device_id,
            "seed": self.seed,
            "step_index": self.step_index,
            "local_indices": list(self._local_indices),
            "local_steps": list(self._local_steps),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` (of a stream with the same pool, schedule and seed).

        Raises:
            ValueError: If the state belongs to another device or seed, or is inconsistent with the pool.
        """
        for key in ("device_id", "seed"):
            expected = self.pool.device_id if key == "device_id" else self.seed
            if int(state[key]) != expected:
                raise ValueError(f"state {key}={state[key]!r} does not match this stream's {key}={expected}")
        indices = [int(i) for i in state["local_indices"]]
        steps = [int(s) for s in state["local_steps"]]
        step_index = int(state["step_index"])
        if len(indices) != len(steps) or not indices:
            raise ValueError("state local_indices and local_steps must be non-empty and of equal length")
        if not set(indices) <= set(self.pool.train_indices.tolist()):
            raise ValueError(
                f"state local_indices contain images outside device {self.pool.device_id}'s pool"
            )
        if any(s < 0 or s > step_index for s in steps):
            raise ValueError(f"state local_steps must lie in [0, step_index={step_index}]")
        self.step_index = step_index
        self._local_indices, self._local_steps = indices, steps
        self._image_cache.clear()
        self._test_cache.clear()

    # ----------------------------------------------------------------------------------- internals
    def _rng(self, step: int, tag: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.pool.device_id, step, tag])

    def _torch_generator(self, *key: int) -> torch.Generator:
        seed = np.random.SeedSequence([self.seed, self.pool.device_id, *key]).generate_state(1)[0]
        return torch.Generator().manual_seed(int(seed))

    def _environment_classes(self, environment: Environment) -> tuple[int, ...]:
        if environment.classes is None:
            return self.pool.classes
        classes = tuple(c for c in environment.classes if c in self.pool.classes)
        if not classes:
            raise ValueError(
                f"environment classes {list(environment.classes)} share none of device {self.pool.device_id}'s "
                f"classes {list(self.pool.classes)}"
            )
        return classes

    def _draw(
        self,
        rng: np.random.Generator,
        count: int,
        exclude: set[int],
        fallback: list[int],
        environment: Environment,
    ) -> list[int]:
        """``count`` distinct pool images not in ``exclude``, by the tiers in the module docstring."""
        pool = self.pool.train_indices
        wanted = np.isin(self._labels[pool], self._environment_classes(environment))
        available = ~np.isin(pool, np.fromiter(exclude, dtype=np.int64, count=len(exclude)))
        chosen: list[int] = []
        for tier in (pool[wanted & available], pool[~wanted & available]):
            need = count - len(chosen)
            if need == 0:
                break
            chosen.extend(self._weighted_pick(rng, tier, need))
        need = count - len(chosen)
        if need > 0:
            chosen.extend(
                int(i) for i in rng.choice(np.asarray(fallback, dtype=np.int64), size=need, replace=False)
            )
        return chosen

    def _weighted_pick(self, rng: np.random.Generator, candidates: np.ndarray, count: int) -> list[int]:
        """Up to ``count`` of ``candidates`` without replacement, class mix following ``class_weights``."""
        if len(candidates) <= count:
            return [int(i) for i in rng.permutation(candidates)]
        labels = self._labels[candidates]
        per_class = np.bincount(labels, minlength=len(self._class_weights))
        # Each image gets its class weight split evenly among that class's candidates.
        weights = self._class_weights[labels] / per_class[labels]
        if weights.sum() <= 0 or np.count_nonzero(weights) < count:
            weights = np.ones(len(candidates))
        picked = rng.choice(candidates, size=count, replace=False, p=weights / weights.sum())
        return [int(i) for i in picked]

    def _corrupted(self, index: int, step: int) -> torch.Tensor:
        key = (index, step)
        if key not in self._image_cache:
            environment = self.schedule.environment_at(step)
            generator = self._torch_generator(step, index, _TAG_CORRUPT)
            image = self.data.images[index : index + 1]
            self._image_cache[key] = apply_corruption(
                image, environment.corruption, environment.severity, generator
            )[0]
        return self._image_cache[key]

    def _segment_test_set(self, segment: int) -> LabelledImages:
        if segment not in self._test_cache:
            environment = self.schedule.segment_environment(segment)
            pool = self.pool.test_indices
            indices = pool[np.isin(self._labels[pool], self._environment_classes(environment))]
            if self.test_size is not None and len(indices) > self.test_size:
                rng = self._rng(segment, _TAG_TEST)
                indices = np.sort(rng.choice(indices, size=self.test_size, replace=False))
            clean = self.data.subset(indices)
            generator = self._torch_generator(segment, _TAG_TEST)
            corrupted = apply_corruption(
                clean.images, environment.corruption, environment.severity, generator
            )
            # Only the current and previous segments are ever asked for; drop older ones.
            self._test_cache = {s: v for s, v in self._test_cache.items() if s >= segment - 1}
            self._test_cache[segment] = clean.with_images(corrupted)
        return self._test_cache[segment]
