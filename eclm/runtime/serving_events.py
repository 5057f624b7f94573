"""A serving session's event log and its (fail-soft) path to the campaign tracker."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from eclm.serving.plots import throughput_over_time
from eclm.serving.session_log import session_metrics

log = logging.getLogger("eclm.serving")


class SessionEvents:
    """Events of one deployment (deploy, re-partition, replacement, CPU share) and their logging.

    Args:
        name: Session name (used in MLflow keys).
        tracker: A started :class:`~eclm.tracking.CampaignTracker`, or ``None`` (events are kept
            in memory only).
    """

    def __init__(self, name: str, tracker=None) -> None:
        self.name, self.tracker = name, tracker
        self.events: list[dict[str, Any]] = []
        self.started_at = time.time()

    def restart(self, now: float | None = None) -> float:
        """Restart the session clock: event times and timelines count from ``now`` on.

        Events recorded earlier keep their place in time: their ``time_s`` is shifted to the new
        start (negative when they happened before it).

        Args:
            now: Wall time (s) of the new start; default: the current time.

        Returns:
            The new start (wall time, s).
        """
        now = time.time() if now is None else float(now)
        shift = now - self.started_at
        for event in self.events:
            event["time_s"] -= shift
        self.started_at = now
        return now

    def record(self, event: dict[str, Any]) -> None:
        """Keep ``event`` (stamped with ``time_s`` since the start); log re-partitions and replacements."""
        event = {"time_s": time.time() - self.started_at, **event}
        self.events.append(event)
        log.info("serving %s: %s", self.name, event)
        if event["kind"] in ("repartition", "replace"):
            k = sum(1 for e in self.events if e["kind"] == event["kind"])
            self.track(lambda t: t.log_json(f"serving/{self.name}/events/{event['kind']}_{k:03d}.json", event))
            self.track(lambda t: t.log_round(k, {f"serving/{self.name}/{event['kind']}_time_s": event["time_s"]}))

    def track(self, action: Callable[[Any], Any]) -> None:
        """Run a tracker call if a started tracker is attached; never let logging break serving."""
        if self.tracker is None or getattr(self.tracker, "journal_path", None) is None:
            return
        try:
            action(self.tracker)
        except (RuntimeError, ValueError, TypeError) as err:
            log.warning("serving %s: tracking failed: %s", self.name, err)

    def log(self, stats: dict[str, Any], timeline: dict[str, Any]) -> None:
        """Log the session's figures, events and throughput-over-time plot.

        Args:
            stats: :meth:`Deployment.stats` of the session.
            timeline: :meth:`Deployment.timeline` (``time_s``, ``throughput_rps``, ``events``).
        """
        prefix = f"serving/{self.name}"
        self.track(lambda t: t.log_round(0, session_metrics(self.name, stats)))
        self.track(lambda t: t.log_json(f"{prefix}/session.json", {"stats": stats, "events": self.events}))
        for k, value in enumerate(timeline["throughput_rps"]):
            self.track(lambda t, k=k, value=value: t.log_round(k, {f"{prefix}/throughput_rps_window": value}))
        if timeline["time_s"]:
            fig = throughput_over_time({self.name: (timeline["time_s"], timeline["throughput_rps"])},
                                       {self.name: timeline["events"]}, title=f"Serving {self.name}")
            self.track(lambda t: t.log_figure(fig, f"{prefix}/throughput.png"))
