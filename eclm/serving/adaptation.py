"""The adaptive re-partitioning policy of a pipeline deployment (Ray-free; the coordinator acts).

:class:`RepartitionPolicy` holds what the coordinator knows about the nodes - their profiles, a
:class:`~eclm.serving.planning.SlowdownTracker` each, their current CPU shares, and the monitor
events that arrived with results or status replies - and answers one question, *should the
running plan change now?*, with a decision value. The coordinator carries the decision out
(drain, reload, switch) and tells the policy what it installed.

Rate limits: a check runs when an event arrived or every ``monitor_interval_s``, and never within
``repartition_cooldown_s`` of the last switch (new stages need a few micro-batches to settle their
baselines before their numbers mean anything). A check acts only on *settled* factors: if any
node's factor moved by more than half the monitor threshold since the previous check, the
smoothed latencies are still converging (an EWMA needs several readings to reach a step change),
and acting then would cut for a half-measured slowdown and re-baseline the moved stages on it -
the check waits for the next one instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from eclm.serving.config import ServingConfig
from eclm.serving.partition_problem import PartitionPlan
from eclm.serving.planning import NodeProfile, SlowdownTracker, build_problem, replan
from eclm.serving.replan import RepartitionDecision


class RepartitionPolicy:
    """When and how a pipeline deployment re-partitions.

    Args:
        profiles: One calibrated profile per node.
        config: Thresholds, intervals, objective and partitioner.
        plan: The plan deployed now.
        now: Current time (monotonic seconds).

    Raises:
        ValueError: If the profiles do not match the config's nodes.
    """

    def __init__(self, profiles: Sequence[NodeProfile], config: ServingConfig, plan: PartitionPlan,
                 now: float) -> None:
        build_problem(profiles, config)  # validates the profiles against the nodes
        self.profiles = sorted(profiles, key=lambda p: p.node)
        self.config = config
        self.plan = plan
        self.shares = list(config.node_cpu_shares)
        self.trackers = [SlowdownTracker(p, config.monitor_threshold) for p in self.profiles]
        for i, tracker in enumerate(self.trackers):
            tracker.reset(plan.blocks_of(i), 1.0, self.shares[i])
        self.pending: list[dict[str, Any]] = []
        self.last_check = now
        self.last_switch = -math.inf
        self.last_factors = [1.0] * config.n_nodes

    # ------------------------------------------------------------------ inputs
    def observe(self, timing: Mapping[str, Any]) -> None:
        """Take one stage's timing dict (smoothed block latencies, monitor events)."""
        node = int(timing["node"])
        if timing.get("monitored"):
            self.trackers[node].observe(timing["smoothed"])
        self.pending.extend(timing.get("events", ()))

    def observe_status(self, status: Mapping[str, Any]) -> None:
        """Take a node's status reply (its current CPU share and monitor events)."""
        self.shares[int(status["node"])] = float(status["cpu_share"])
        self.pending.extend(status.get("events", ()))

    def set_share(self, node: int, cpu_share: float) -> None:
        """Record a node's new CPU share (known to the coordinator, e.g. an emulated change)."""
        self.shares[node] = float(cpu_share)

    def idle_nodes(self) -> list[int]:
        """Nodes without blocks in the running plan (no results to report through: poll them)."""
        return [i for i in range(self.config.n_nodes) if not self.plan.blocks_of(i)]

    def status_due(self, now: float) -> bool:
        """Whether a periodic check is due (also when idle nodes should be polled)."""
        return now - self.last_check >= self.config.monitor_interval_s

    def factors(self) -> list[float]:
        """Each node's current slowdown factor (1.0 = as profiled)."""
        return [t.factor(self.shares[i]) for i, t in enumerate(self.trackers)]

    # ------------------------------------------------------------------ decision
    def decide(self, now: float) -> tuple[RepartitionDecision, list[dict]] | None:
        """Check the running plan if due; ``None`` when no check ran or the factors still move.

        Returns:
            ``(decision, events)``: the :class:`RepartitionDecision` on the problem rebuilt with
            the current factors, and the monitor events since the last check.
        """
        cfg = self.config
        if not cfg.repartition or now - self.last_switch < cfg.repartition_cooldown_s:
            return None
        if not (self.pending or self.status_due(now)):
            return None
        self.last_check = now
        factors, previous = self.factors(), self.last_factors
        self.last_factors = factors
        settled = all(abs(f / p - 1.0) <= cfg.monitor_threshold / 2 for f, p in zip(factors, previous, strict=True))
        if not settled:
            return None  # keep the events: they still explain the next check
        events, self.pending = self.pending, []
        problem = build_problem(self.profiles, cfg, factors, self.plan.codec)
        return replan(problem, self.plan, cfg, self.shares), events

    def installed(self, plan: PartitionPlan, now: float, switched: bool = True) -> list[int]:
        """The coordinator deployed ``plan``; nodes whose blocks changed re-settle their baselines.

        Args:
            plan: The plan now running.
            now: Current time (monotonic seconds).
            switched: Count it as a re-partition for the cooldown.

        Returns:
            The nodes whose block ranges changed.
        """
        factors = self.factors()
        self.last_factors = factors
        changed = [i for i in range(self.config.n_nodes) if plan.blocks_of(i) != self.plan.blocks_of(i)]
        for i in changed:
            self.trackers[i].reset(plan.blocks_of(i), factors[i], self.shares[i])
        self.plan = plan
        if switched:
            self.last_switch = now
        return changed

    def replaced(self, node: int) -> None:
        """Node ``node`` got a fresh actor (fresh monitor): re-settle its baseline."""
        tracker = self.trackers[node]
        tracker.reset(tracker.held, tracker.factor(self.shares[node]), self.shares[node])
