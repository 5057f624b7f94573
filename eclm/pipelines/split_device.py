"""The split-learning methods of a device service (the device side of a split round).

Mixed into :class:`~eclm.pipelines.edge_service.EdgeService`; the protocol is driven by
:mod:`eclm.campaign.split_round` and the logic lives in
:class:`~eclm.pipelines.split_edge.SplitDeviceWorker`.
"""

from __future__ import annotations

from eclm.pipelines.split_edge import SplitDeviceWorker


class SplitDeviceMixin:
    """``split_*`` endpoint methods; expects ``name``, ``stream``, ``skeleton``, ``cfg``, ``classes``,
    ``detector``, ``rounds``, ``profile()`` and ``importance()`` on the host class."""

    _split: SplitDeviceWorker | None = None

    def split_hello(self) -> dict:
        """What the cloud needs to plan a split round: local sizes, classes, resources, host speed."""
        from eclm.pipelines.profiler import measure_gflops

        return {"device": self.name, "num_samples": len(self.stream.train_set().images),
                "test_samples": len(self.stream.test_set().images), "classes": list(self.classes),
                "resources": self.profile().as_dict(), "host_gflops": measure_gflops()}

    def split_begin(self, payload: bytes, client_sizes: list[int], client_index: int) -> dict:
        """Install the device part (prefix of the split sub-model) the cloud sent."""
        train, test = self.stream.train_set(), self.stream.test_set()
        self._split = SplitDeviceWorker.from_payload(
            self.name, self.skeleton, payload, self.cfg.split, client_sizes, client_index,
            (train.images, train.labels), (test.images, test.labels))
        return self._split.describe()

    def _split_worker(self) -> SplitDeviceWorker:
        if self._split is None:
            raise RuntimeError(f"device {self.name} has no split session (split_begin was not called)")
        return self._split

    def split_forward(self, epoch: int, step: int, gradient: bytes | None = None) -> bytes:
        """Apply the previous step's gradient (if any), then send this step's smashed activations."""
        return self._split_worker().forward(epoch, step, gradient)

    def split_backward(self, gradient: bytes) -> None:
        self._split_worker().backward(gradient)

    def split_epoch_end(self) -> dict:
        return self._split_worker().epoch_end()

    def split_load(self, payload: bytes) -> None:
        self._split_worker().load(payload)

    def split_smash_test(self) -> bytes:
        return self._split_worker().smash_test()

    def split_end(self) -> dict:
        """Close the split session; the drift reference moves to the adapted state."""
        info = self._split_worker().describe()
        self._split = None
        self.detector.update_reference(None, self.importance())
        self.rounds += 1
        return info


__all__ = ["SplitDeviceMixin"]
