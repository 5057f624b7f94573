"""A bounded replay memory of past samples, for rehearsal against forgetting.

Reservoir sampling (Vitter's algorithm R) keeps a uniform random sample of *everything seen so far*
in a fixed capacity: the t-th sample (0-based) enters with probability ``capacity / (t + 1)`` and
evicts a uniformly chosen slot. Old environments therefore stay represented in proportion to how
much of the stream they made up, without storing the stream.
"""

from __future__ import annotations

import numpy as np
import torch


class ReplayBuffer:
    """Fixed-capacity reservoir of ``(image, label)`` pairs.

    Args:
        capacity: Maximum number of stored samples (>= 1).
        seed: Seed of the admission/eviction and sampling choices.

    Raises:
        ValueError: If ``capacity`` < 1 or ``seed`` < 0.
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.capacity = capacity
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._images: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None
        self._size = 0
        self.seen = 0  #: Samples offered to the buffer so far.

    def __len__(self) -> int:
        return self._size

    def add(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Offer a batch to the reservoir.

        Args:
            images: ``(B, C, H, W)`` float tensor; every batch must share ``(C, H, W)``.
            labels: ``(B,)`` int64 tensor.

        Raises:
            ValueError: If shapes disagree with each other or with earlier batches.
        """
        if images.ndim != 4 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"images must be (B, C, H, W) and labels (B,) with equal B, got {tuple(images.shape)} "
                f"and {tuple(labels.shape)}"
            )
        if self._images is None:
            self._images = images.new_zeros((self.capacity, *images.shape[1:]))
            self._labels = labels.new_zeros((self.capacity,))
        elif images.shape[1:] != self._images.shape[1:]:
            raise ValueError(
                f"images of shape {tuple(images.shape[1:])} do not match the buffer's {tuple(self._images.shape[1:])}"
            )
        assert self._labels is not None
        # slot -> row; a later row overwrites an earlier one in the same slot, as sequential adds would.
        placement: dict[int, int] = {}
        for row in range(images.shape[0]):
            if self._size < self.capacity:
                slot = self._size
                self._size += 1
            else:
                slot = int(self._rng.integers(self.seen + 1))
            self.seen += 1
            if slot < self.capacity:
                placement[slot] = row
        if placement:
            slots, sources = list(placement), list(placement.values())
            self._images[slots] = images[sources].detach().to(self._images.dtype)
            self._labels[slots] = labels[sources].to(self._labels.dtype)

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``min(n, len(self))`` distinct stored samples, uniformly at random.

        Returns:
            Images ``(m, C, H, W)`` and labels ``(m,)``.

        Raises:
            ValueError: If ``n`` < 0 or the buffer is empty.
        """
        rows = self.sample_rows(n)
        return self._images[rows].clone(), self._labels[rows].clone()

    def sample_rows(self, n: int) -> torch.Tensor:
        """Rows of ``min(n, len(self))`` distinct stored samples, uniformly at random (the draw
        :meth:`sample` and :meth:`mix` make).

        Raises:
            ValueError: If ``n`` < 0 or the buffer is empty.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if self._images is None or self._labels is None or self._size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        return torch.as_tensor(self._rng.choice(self._size, size=min(n, self._size), replace=False), dtype=torch.long)

    def stored(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored samples ``(images, labels)`` in row order (views, not copies)."""
        if self._images is None or self._labels is None:
            raise ValueError("the replay buffer is empty")
        return self._images[: self._size], self._labels[: self._size]

    def mix(
        self, batch_x: torch.Tensor, batch_y: torch.Tensor, ratio: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append replayed samples to a batch (experience replay).

        Args:
            batch_x: ``(B, C, H, W)`` new images.
            batch_y: ``(B,)`` new labels.
            ratio: Replayed samples per new sample, >= 0: ``round(ratio * B)`` are appended (fewer if
                the buffer holds fewer). An empty buffer returns the batch unchanged.

        Returns:
            Images ``(B + r, C, H, W)`` and labels ``(B + r,)``, new samples first.

        Raises:
            ValueError: If ``ratio`` < 0.
        """
        if ratio < 0:
            raise ValueError(f"ratio must be >= 0, got {ratio}")
        count = int(round(ratio * batch_x.shape[0]))
        if count == 0 or self._size == 0:
            return batch_x, batch_y
        replay_x, replay_y = self.sample(count)
        mixed_x = torch.cat([batch_x, replay_x.to(batch_x.dtype)])
        mixed_y = torch.cat([batch_y, replay_y.to(batch_y.dtype)])
        return mixed_x, mixed_y

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """The buffer's state: JSON-able facts (sizes, RNG state) and its stored tensors.

        Returns:
            ``(info, tensors)``; ``tensors`` holds ``images`` and ``labels`` (the filled rows
            only), empty for an empty buffer.
        """
        info = {"capacity": self.capacity, "seed": self.seed, "size": self._size, "seen": self.seen,
                "rng": self._rng.bit_generator.state}
        if self._images is None or self._labels is None:
            return info, {}
        return info, {"images": self._images[: self._size].clone(), "labels": self._labels[: self._size].clone()}

    def load_state_dict(self, info: dict, tensors: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict` output (same capacity and seed).

        Raises:
            ValueError: If capacity or seed differ, or the tensors do not match the sizes.
        """
        if int(info["capacity"]) != self.capacity or int(info["seed"]) != self.seed:
            raise ValueError(f"replay state of capacity {info['capacity']} / seed {info['seed']} does not fit "
                             f"a buffer of capacity {self.capacity} / seed {self.seed}")
        size = int(info["size"])
        if size and (tensors.get("images") is None or len(tensors["images"]) != size or len(tensors["labels"]) != size):
            raise ValueError(f"replay state says {size} samples but carries other tensors")
        self._rng.bit_generator.state = info["rng"]
        self._size, self.seen = size, int(info["seen"])
        if not size:
            self._images = self._labels = None
            return
        images, labels = tensors["images"], tensors["labels"]
        self._images = images.new_zeros((self.capacity, *images.shape[1:]))
        self._labels = labels.new_zeros((self.capacity,))
        self._images[:size], self._labels[:size] = images, labels

