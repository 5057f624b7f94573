"""The axis of variation of the adaptation benchmark: what a method does around local adaptation.

Every method runs on the platform's own Ray-free services: one
:class:`~eclm.pipelines.edge_service.EdgeService` per device (its drifting data stream, shared
by all methods so they see bit-identical data) and a private copy of the pretrained
:class:`~eclm.pipelines.cloud_service.CloudService`. A method decides

* what the device holds before it adapts (:meth:`AdaptationMethod.deliver`: install a derived
  sub-model, a width-prefix slice of a global model, or keep what it has), and
* what the server does with the devices' uploads afterwards (:meth:`AdaptationMethod.finish_cycle`).

Local adaptation itself is always ``EdgeService.adapt`` with the platform's adaptation settings
(same epochs, learning rate, batch size, replay and class restriction for every method).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from eclm.data import ReplayBuffer
from eclm.modules import CostTable, DeviceProfile, SubModelSpec
from eclm.pipelines.cloud_service import CloudService
from eclm.pipelines.drift_detection import DriftDetector
from eclm.pipelines.edge_service import EdgeService
from eclm.pipelines.profiler import budget_from_resources

# The EdgeService attributes that make up "what one method has on this device".
_SLOT_FIELDS = ("model", "spec", "costs", "version", "replay", "detector", "rounds")


@dataclass
class DeviceSlot:
    """One method's state on one device (the rest of the device, its data, is shared).

    Attributes:
        replay: The method's replay buffer on this device (fresh, seeded like the platform's).
        detector: The method's drift-detector reference state.
        model: The sub-model the device holds (``None`` before the first delivery).
        spec: Its spec.
        costs: The cost table it came with.
        version: Cloud version the held sub-model was derived from (eclm keeps it if unchanged).
        rounds: Adaptation rounds run (seeds the batch order, as on the platform).
    """

    replay: ReplayBuffer
    detector: DriftDetector
    model: nn.Module | None = None
    spec: SubModelSpec | None = None
    costs: CostTable | None = None
    version: int | None = None
    rounds: int = 0

    @classmethod
    def fresh(cls, service: EdgeService) -> DeviceSlot:
        """An empty slot whose replay buffer and detector equal a newly started device's."""
        if service.model is not None:
            raise ValueError(f"device {service.name}: fresh slots must be taken before any model is installed")
        return cls(replay=copy.deepcopy(service.replay), detector=copy.deepcopy(service.detector))


@contextmanager
def occupy(service: EdgeService, slot: DeviceSlot) -> Iterator[EdgeService]:
    """Swap ``slot`` into ``service`` for the duration of the block, then save it back."""
    saved = {f: getattr(service, f) for f in _SLOT_FIELDS}
    for f in _SLOT_FIELDS:
        setattr(service, f, getattr(slot, f))
    try:
        yield service
    finally:
        for f in _SLOT_FIELDS:
            setattr(slot, f, getattr(service, f))
            setattr(service, f, saved[f])


class AdaptationMethod(ABC):
    """A way of keeping device models adapted: what is delivered, what is merged.

    Args:
        cloud: This method's own copy of the pretrained cloud service (methods that merge
            change it; nothing is shared between methods).
        services: Every device of the population.

    Attributes:
        name: Short key used in results (``"eclm"``, ``"fedavg"``, ...).
        label: Name shown in tables and plots.
        adapts: Whether devices fine-tune locally (NA does not).
        merges: Whether device uploads go to a server each cycle.
    """

    name: ClassVar[str]
    label: ClassVar[str]
    adapts: ClassVar[bool] = True
    merges: ClassVar[bool] = True

    def __init__(self, cloud: CloudService, services: list[EdgeService]) -> None:
        self.cloud = cloud
        self.info = cloud.info()
        self.costs = CostTable.from_dict(self.info["costs"])
        self.slots = {s.name: DeviceSlot.fresh(s) for s in services}
        self.budgets = {s.name: self.budget(s) for s in services}
        self._selector: bytes | None = None

    def budget(self, service: EdgeService) -> DeviceProfile:
        """The device's resource budget, computed exactly as the cloud does when it derives."""
        a = self.cloud.cfg.adaptation
        return budget_from_resources(
            service.name, service.profile(), full_params=self.info["full_cost"]["params"], batch_size=a.batch_size,
            target_step_seconds=a.target_step_seconds, max_transfer_seconds=a.max_transfer_seconds,
        )

    def begin_cycle(self, round_index: int) -> None:  # noqa: B027 - optional hook
        """Called once per cycle before any device of the cycle is served."""

    @abstractmethod
    def deliver(self, service: EdgeService) -> int:
        """Bring the device's model up to date before local adaptation.

        Called with this method's slot occupying ``service``.

        Returns:
            Bytes sent from the server to the device for it (0 if nothing was sent).
        """

    def finish_cycle(self, uploads: list[dict]) -> dict:
        """Server step after every sampled device adapted.

        Args:
            uploads: ``EdgeService.adapt`` outputs (device, payload, importance, num_samples, classes).

        Returns:
            JSON-able facts about the step (e.g. the merge decision).
        """
        return {}

    def derive_for(self, service: EdgeService) -> int:
        """Install eclm's derivation for ``service`` from this method's cloud, as ``Platform.run_cycle`` does.

        The device sends its importance summary (computed with the cloud's selector, which it
        downloads) and its resources, plus the spec and cloud version it holds; the cloud derives
        the sub-model and ships it unless the device already holds exactly that (then it keeps its
        adapted weights).

        Returns:
            Bytes sent down: the selector and the sub-model payload (if any was shipped).
        """
        if self._selector is None:
            # The selector never changes after the offline stage (merges touch the backbone only).
            self._selector = self.cloud.selector_payload()
        selector = self._selector
        summary = service.summary(selector)
        package = self.cloud.derive(service.name, summary["importance"], summary["resources"],
                                    summary.get("held_spec"), summary.get("held_version"))
        service.install(package["spec"], package["payload"], self.info["costs"], package["version"])
        return len(selector) + len(package["payload"] or b"")
