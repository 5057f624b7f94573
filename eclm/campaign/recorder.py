"""Where a campaign's records go: the recorder interface the coordinator reports to.

The coordinator reports facts (the offline stage, every cycle, every new cloud version, idle
steps, recoveries) to a :class:`CycleRecorder`; :class:`~eclm.campaign.tracking_recorder.TrackingRecorder`
writes them to MLflow and the JSONL journal, :class:`NullRecorder` drops them (benchmarks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from eclm.campaign.messages import CloudInfo, CloudSnapshot, DeviceSummary, EpochRecord
from eclm.campaign.results import CycleResult
from eclm.campaign.store import RoundRecord


class CycleRecorder(Protocol):
    """What the coordinator reports (every method must fail soft: recording never ends a campaign)."""

    def record_pretrain(self, history: Sequence[EpochRecord], val_acc: float, seconds: float) -> None: ...

    def record_version(self, version: int, snapshot: CloudSnapshot, info: CloudInfo, val_acc: float | None,
                       step: int) -> None: ...

    def record_cycle(self, result: CycleResult, summaries: Mapping[str, DeviceSummary], info: CloudInfo,
                     history: Sequence[RoundRecord]) -> None: ...

    def record_idle(self, round_index: int, drift: Mapping[str, float]) -> None: ...

    def record_event(self, kind: str, round_index: int, data: Mapping[str, Any]) -> None: ...


class NullRecorder:
    """Records nothing."""

    def record_pretrain(self, history, val_acc, seconds) -> None:
        pass

    def record_version(self, version, snapshot, info, val_acc, step) -> None:
        pass

    def record_cycle(self, result, summaries, info, history) -> None:
        pass

    def record_idle(self, round_index, drift) -> None:
        pass

    def record_event(self, kind, round_index, data) -> None:
        pass


__all__ = ["CycleRecorder", "NullRecorder"]
