"""From measured node profiles to a partition plan, stage routes, and re-plans after changes.

The coordinator profiles every node once (each stage actor times every block on the node it
emulates), builds a :class:`~eclm.serving.partition_problem.PartitionProblem` from those numbers
and asks the configured partitioner for a plan. While serving, each node's monitor keeps smoothed
latencies of the blocks it runs; a :class:`SlowdownTracker` per node turns them into one factor, the problem is rebuilt with the profiled latencies scaled by those
factors, and :func:`replan` decides whether a new plan is worth a re-deploy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from eclm.serving.config import WIRE_RATIO, ServingConfig
from eclm.serving.partition import dp_partition, monolithic_plan, proportional_partition
from eclm.serving.partition_problem import PartitionPlan, PartitionProblem, evaluate_plan
from eclm.serving.replan import RepartitionDecision, decide_repartition

# A codec must lower the predicted objective by this fraction to be used: encoding and decoding
# cost CPU time that the cost model does not count (0.1-0.3 ms per 100 kB on the development host).
_CODEC_MIN_GAIN = 0.05


@dataclass(frozen=True)
class NodeProfile:
    """Measured per-block numbers of one node at the served micro-batch size.

    Attributes:
        node: Node index in pipeline order.
        cpu_share: The node's CPU share when it was profiled.
        block_seconds: ``[n_blocks]`` seconds per block on this node.
        input_bytes: Bytes of one model input micro-batch.
        activation_bytes: ``[n_blocks]`` bytes of the activation after each block.
        block_memory: ``[n_blocks]`` bytes of parameters and buffers per block.
        stage_overhead: Seconds a stage on this node pays per micro-batch on top of its blocks.
    """

    node: int
    cpu_share: float
    block_seconds: tuple[float, ...]
    input_bytes: float
    activation_bytes: tuple[float, ...]
    block_memory: tuple[float, ...]
    stage_overhead: float = 0.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NodeProfile:
        """Build from :meth:`~eclm.serving.worker.StageWorker.profile`'s result.

        Raises:
            ValueError: If the lists disagree in length or the profile does not start at block 0.
        """
        if data.get("start", 0) != 0:
            raise ValueError(f"profile of node {data.get('node')} must cover the chain from block 0")
        n = len(data["block_seconds"])
        if not n or len(data["activation_bytes"]) != n or len(data["block_memory"]) != n:
            raise ValueError(f"profile of node {data.get('node')} has inconsistent block lists")
        return cls(int(data["node"]), float(data["cpu_share"]), tuple(map(float, data["block_seconds"])),
                   float(data["input_bytes"]), tuple(map(float, data["activation_bytes"])),
                   tuple(map(float, data["block_memory"])), float(data.get("stage_overhead", 0.0)))

    def calibrated(self, served_block_seconds: Sequence[float]) -> NodeProfile:
        """This profile corrected with block times measured through the serving path.

        The isolated profile times every block back to back on warm caches. A stage serving real
        traffic wakes from idling for each micro-batch, and its first block then pays for cold
        code and data paths (measured 0.15-0.6 ms of CPU per stage on a shared 2-core host).
        Timing the whole chain as one served stage gives each block's serving cost, block 0
        including that entry cost: the excess of served over isolated block 0 becomes the
        per-stage overhead, and the served times of the other blocks replace the isolated ones.

        Args:
            served_block_seconds: ``[n_blocks]`` median block times of the chain served as one stage.

        Returns:
            The corrected profile.

        Raises:
            ValueError: If the length does not match.
        """
        if len(served_block_seconds) != len(self.block_seconds):
            raise ValueError(f"need {len(self.block_seconds)} served block times, got {len(served_block_seconds)}")
        served = tuple(float(t) for t in served_block_seconds)
        overhead = max(served[0] - self.block_seconds[0], 0.0)
        return replace(self, block_seconds=(self.block_seconds[0],) + served[1:], stage_overhead=overhead)


@dataclass(frozen=True)
class StageRoute:
    """One hop of a micro-batch's route through the pipeline.

    Attributes:
        node: Node that runs the hop.
        start: First block (inclusive).
        stop: Last block (exclusive); ``start == stop`` is a *relay*: the entry node 0 runs no
            blocks and only sends the input on to the first active node (the plan's ingress step).
        hops_out: Link hops to the next active node (0 for the last stage).
        codec: Wire codec of the hop's output (float32 for the last stage: the result).
    """

    node: int
    start: int
    stop: int
    hops_out: int
    codec: str = "float32"

    @property
    def is_relay(self) -> bool:
        return self.start == self.stop


def build_problem(profiles: Sequence[NodeProfile], config: ServingConfig,
                  slowdown: Sequence[float] | None = None, codec: str = "float32") -> PartitionProblem:
    """The partitioning problem for the configured nodes from their measured profiles.

    Args:
        profiles: One profile per node of ``config``, any order.
        config: Link, memory and hand-off settings.
        slowdown: ``[n_nodes]`` factors (> 0) scaling each node's block latencies; ``None`` = 1.
        codec: Wire codec of the activations (sets the problem's ``wire_ratio``).

    Returns:
        The :class:`PartitionProblem` (links form a chain of identical hops).

    Raises:
        ValueError: If a node lacks a profile, the profiles disagree on the chain, or a factor is
            not positive.
    """
    by_node = {p.node: p for p in profiles}
    if sorted(by_node) != list(range(config.n_nodes)):
        raise ValueError(f"need one profile per node 0..{config.n_nodes - 1}, got nodes {sorted(by_node)}")
    ordered = [by_node[i] for i in range(config.n_nodes)]
    first = ordered[0]
    for p in ordered[1:]:
        if len(p.block_seconds) != len(first.block_seconds) or p.activation_bytes != first.activation_bytes:
            raise ValueError(f"profile of node {p.node} describes a different chain than node {first.node}")
    factors = [1.0] * config.n_nodes if slowdown is None else list(slowdown)
    if len(factors) != config.n_nodes:
        raise ValueError(f"slowdown must have {config.n_nodes} entries, got {len(factors)}")
    for i, f in enumerate(factors):
        if not (f > 0 and math.isfinite(f)):
            raise ValueError(f"slowdown[{i}] must be a positive finite factor, got {f!r}")
    hops = config.n_nodes - 1
    return PartitionProblem(
        tuple(tuple(t * f for t in p.block_seconds) for p, f in zip(ordered, factors, strict=True)),
        first.activation_bytes, first.input_bytes,
        (config.link_bandwidth_bytes_per_s,) * hops, (config.link_latency_s,) * hops,
        first.block_memory, None if config.node_memory_bytes is None else tuple(config.node_memory_bytes),
        tuple(p.stage_overhead * f for p, f in zip(ordered, factors, strict=True)),
        config.overlap_transfers, WIRE_RATIO[codec],
    )


def strongest_node(cpu_shares: Sequence[float]) -> int:
    """Index of the node with the largest CPU share (the earliest on ties)."""
    return max(range(len(cpu_shares)), key=lambda i: (cpu_shares[i], -i))


def make_plan(problem: PartitionProblem, config: ServingConfig, partitioner: str | None = None,
              cpu_shares: Sequence[float] | None = None) -> PartitionPlan:
    """The plan of ``partitioner`` (default: the configured one) for ``problem``, with its wire codec.

    The codec is ``config.activation_codec``; ``"auto"`` plans with float32 activations and with
    float16 ones and takes float16 only if that lowers the objective (bottleneck or latency) by at
    least 5%, i.e. where links limit the pipeline. Every partitioner gets the same rule.

    Args:
        problem: The partitioning problem (its ``wire_ratio`` is replaced by the codec's).
        config: Objective, node shares and codec.
        partitioner: ``"dp"``, ``"proportional"`` (AMP4EC) or ``"monolithic"`` (everything on
            the strongest node).
        cpu_shares: Current shares (default: the configured ones); proportional and monolithic
            plans depend on them.

    Returns:
        The plan (``plan.codec`` says how its activations travel).

    Raises:
        ValueError: If the partitioner is unknown or no dp plan fits memory.
    """
    name = partitioner or config.partitioner
    shares = list(cpu_shares or config.node_cpu_shares)
    if name not in ("dp", "proportional", "monolithic"):
        raise ValueError(f"partitioner must be 'dp', 'proportional' or 'monolithic', got {name!r}")

    def plan_with(codec: str) -> PartitionPlan:
        coded = replace(problem, wire_ratio=WIRE_RATIO[codec])
        if name == "dp":
            plan = dp_partition(coded, config.objective, config.plan_tolerance)
        elif name == "proportional":
            plan = proportional_partition(coded, shares)
        else:
            plan = monolithic_plan(coded, strongest_node(shares))
        return replace(plan, codec=codec)

    if config.activation_codec != "auto":
        return plan_with(config.activation_codec)
    plain, half = plan_with("float32"), plan_with("float16")
    cost = (lambda p: p.bottleneck) if config.objective == "throughput" else (lambda p: p.latency)
    return half if cost(half) <= (1.0 - _CODEC_MIN_GAIN) * cost(plain) else plain


def routes_for(plan: PartitionPlan) -> tuple[StageRoute, ...]:
    """The hops a micro-batch takes under ``plan``: one per active stage, after a relay through the
    entry node 0 when the plan leaves it idle (the cost model's ingress step, a pipeline step of
    its own on node 0's link)."""
    stages = plan.stages
    routes = [StageRoute(0, 0, 0, stages[0].node, plan.codec)] if stages[0].node > 0 else []
    for pos, stage in enumerate(stages):
        nxt = stages[pos + 1].node if pos + 1 < len(stages) else stage.node
        routes.append(StageRoute(stage.node, stage.start, stage.stop, nxt - stage.node,
                                 plan.codec if nxt > stage.node else "float32"))
    return tuple(routes)


class SlowdownTracker:
    """One node's slowdown factor (how much slower than profiled), from its monitored latencies.

    Block times observed while serving are systematically higher than in the isolated profile:
    the first block of a stage meets a cold cache (its input just arrived), and the host's cores
    are shared with the other stage actors, Ray and the driver. Measured on a 2-core host the gap
    was 1.2-4x per block, different per node and per cut, so comparing observations with the
    profile directly would read every deployment as "slowed down". The tracker therefore
    *calibrates*: after every (re)assignment of blocks it waits for ``settle`` observations and
    takes their ratio to the profile as the baseline of the factor believed at that moment
    (1.0 at deploy); later observations are read relative to that baseline. A changed factor is
    reported only when it moved by more than ``threshold`` (relative), so jitter never re-plans.
    An idle node has no block timings: its factor is the one believed when it went idle, scaled
    by how its CPU share changed since (so an emulated recovery shows, while a slowdown that
    never showed in the share is remembered rather than forgotten).

    Args:
        profile: The node's profile.
        threshold: Relative change of the factor that counts as real, >= 0.
        settle: Observations (full micro-batches) that form the baseline, >= 1.

    Raises:
        ValueError: If ``threshold`` or ``settle`` is out of range.
    """

    def __init__(self, profile: NodeProfile, threshold: float = 0.25, settle: int = 4) -> None:
        if not threshold >= 0:
            raise ValueError(f"threshold must be >= 0, got {threshold!r}")
        if not (isinstance(settle, int) and settle >= 1):
            raise ValueError(f"settle must be an int >= 1, got {settle!r}")
        self.profile = profile
        self.threshold = threshold
        self.settle = settle
        self.reset(range(0), 1.0)

    def reset(self, held: range, factor: float, cpu_share: float | None = None) -> None:
        """The node now runs ``held``; ``factor`` is the slowdown believed at this moment.

        Args:
            held: Blocks the node runs from now on (empty: idle).
            factor: Slowdown believed now (> 0).
            cpu_share: The node's CPU share now (default: its share when profiled).

        Raises:
            ValueError: If ``factor`` or ``cpu_share`` is not positive.
        """
        if not (factor > 0 and math.isfinite(factor)):
            raise ValueError(f"factor must be a positive finite number, got {factor!r}")
        share = self.profile.cpu_share if cpu_share is None else float(cpu_share)
        if not share > 0:
            raise ValueError(f"cpu_share must be > 0, got {cpu_share!r}")
        self.held = held
        self.known = float(factor)
        self.share_at_reset = share
        self.calibration: float | None = None
        self.observations = 0
        self.latest: dict[int, float] = {}

    def _ratio(self) -> float | None:
        blocks = [b for b in self.held if b in self.latest]
        reference = math.fsum(self.profile.block_seconds[b] for b in blocks)
        if len(blocks) != len(self.held) or reference <= 0:
            return None
        return math.fsum(self.latest[b] for b in blocks) / reference

    def observe(self, smoothed: Mapping[int, float]) -> None:
        """Take the node's smoothed block latencies reported with one full micro-batch."""
        self.latest.update({int(b): float(t) for b, t in smoothed.items() if int(b) in self.held})
        self.observations += 1
        ratio = self._ratio()
        if self.calibration is None and self.observations >= self.settle and ratio is not None:
            self.calibration = ratio / self.known

    def factor(self, current_share: float | None = None) -> float:
        """The current slowdown factor (> 0); ``known`` until the baseline has settled.

        Args:
            current_share: The node's CPU share now, used when it runs no blocks.
        """
        if len(self.held):
            ratio = self._ratio()
            if self.calibration is None or ratio is None:
                return self.known
            raw = ratio / self.calibration
        elif current_share is not None and current_share > 0:
            raw = self.known * self.share_at_reset / current_share
        else:
            return self.known
        if not (raw > 0 and math.isfinite(raw)) or abs(raw / self.known - 1.0) <= self.threshold:
            return self.known
        return raw


def replan(problem: PartitionProblem, current: PartitionPlan, config: ServingConfig,
           cpu_shares: Sequence[float]) -> RepartitionDecision:
    """Decide whether to switch from ``current`` on the updated ``problem`` (built with its codec).

    ``dp`` re-optimises and switches only for a gain of at least ``repartition_min_gain``
    (:func:`~eclm.serving.replan.decide_repartition`); ``proportional`` (AMP4EC) recomputes its
    share-proportional plan and switches whenever the shares moved it.

    Raises:
        ValueError: If the configured partitioner cannot re-plan (monolithic).
    """
    if config.partitioner == "dp":
        decision = decide_repartition(problem, current, config.objective, config.repartition_min_gain,
                                      config.plan_tolerance)
        return replace(decision, plan=replace(decision.plan, codec=current.codec))
    if config.partitioner != "proportional":
        raise ValueError(f"partitioner {config.partitioner!r} does not re-partition")
    recosted = replace(evaluate_plan(problem, current.boundaries, current.method), codec=current.codec)
    best = replace(proportional_partition(problem, list(cpu_shares)), codec=current.codec)
    cost = (lambda p: p.bottleneck) if config.objective == "throughput" else (lambda p: p.latency)
    if best.boundaries == recosted.boundaries:
        return RepartitionDecision(False, recosted, cost(recosted), cost(best), "shares give the same plan")
    return RepartitionDecision(True, best, cost(recosted), cost(best), "cpu shares changed the proportional plan")
