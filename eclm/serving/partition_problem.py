"""The partitioning problem for a chain of blocks over an ordered list of nodes, and plan evaluation.

Cost model (shared by every partitioner, so plans are compared on equal terms):

* The model is a chain of ``n_blocks`` blocks; node ``i`` gets the contiguous blocks
  ``[boundaries[i], boundaries[i+1])``. Nodes keep their order; a node given zero blocks is skipped.
* A request enters at node 0 (the entry node, e.g. the gateway holding the input). If node 0 is
  skipped, the input (``input_bytes`` times ``wire_ratio``) is first sent from node 0 to the first
  active node: the *ingress* step. The output stays on the last active node.
* An active stage's compute time is the sum of its blocks' latencies on that node, plus the
  node's fixed per-stage overhead if given; its transfer time is the time to send the activation
  at its last cut (``wire_ratio`` of its float32 bytes: the wire codec) to the next active node.
* Store-and-forward on the sender (``overlap_transfers=False``): a stage's pipeline step costs
  compute + transfer. Asynchronous hand-off (``overlap_transfers=True``): the outgoing link works
  while the stage computes the next micro-batch, so compute and transfer are separate pipeline
  steps and the stage's step costs ``max(compute, transfer)`` (the model of pipeline-parallel
  planners such as PipeDream, Narayanan et al., SOSP 2019).
* Links: with a chain of links (``n_nodes - 1`` entries), sending from node ``a`` to node ``b > a``
  crosses every link in between, store-and-forward (each hop costs ``latency + bytes/bandwidth``);
  with an ``n_nodes x n_nodes`` matrix, node ``a`` sends directly over link ``[a][b]``.
* Pipelined throughput is limited by the slowest step: ``bottleneck = max(ingress, stage costs)``;
  requests per second = ``1 / bottleneck``. End-to-end latency of one request is
  ``ingress + sum(compute + transfer)`` either way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def _as_floats(name: str, values: Sequence[float], length: int, *, allow_inf: bool = False) -> tuple:
    if len(values) != length:
        raise ValueError(f"{name} must have {length} entries, got {len(values)}")
    out = tuple(float(v) for v in values)
    for k, v in enumerate(out):
        if not (v >= 0 and (allow_inf or math.isfinite(v))):
            raise ValueError(f"{name}[{k}] must be a {'' if allow_inf else 'finite '}number >= 0, got {v!r}")
    return out


def _as_links(name: str, values: Sequence, n_nodes: int, *, positive: bool, allow_inf: bool) -> tuple:
    """Normalise a chain (n-1 values) or a full n x n matrix of link parameters."""
    # hasattr rather than isinstance(Sequence): numpy rows are not registered as Sequence.
    is_matrix = len(values) > 0 and hasattr(values[0], "__len__")
    rows = [values] if not is_matrix else values
    if is_matrix and len(rows) != n_nodes:
        raise ValueError(f"{name} as a matrix must be {n_nodes} x {n_nodes}, got {len(rows)} rows")
    width = n_nodes if is_matrix else n_nodes - 1
    out = []
    for r, row in enumerate(rows):
        if len(row) != width:
            raise ValueError(f"{name} must have {width} entries per row (n_nodes={n_nodes}), got {len(row)}")
        clean = []
        for c, v in enumerate(row):
            v = float(v)
            if is_matrix and r == c:
                clean.append(v)  # a node never sends to itself; the diagonal is ignored
                continue
            ok = (v > 0 if positive else v >= 0) and (allow_inf or math.isfinite(v))
            if not ok:
                bound = "> 0" if positive else ">= 0"
                raise ValueError(f"{name}[{r}][{c}] must be {bound}, got {v!r}" if is_matrix else
                                 f"{name}[{c}] must be {bound}, got {v!r}")
            clean.append(v)
        out.append(tuple(clean))
    return tuple(out) if is_matrix else out[0]


@dataclass(frozen=True)
class PartitionProblem:
    """Everything a partitioner needs, in seconds and bytes.

    Attributes:
        block_latency: ``[n_nodes][n_blocks]`` seconds of one forward of each block on each node,
            for the batch size being served.
        activation_bytes: ``[n_blocks]`` bytes of the activation at the cut after each block.
        input_bytes: Bytes of the model input (the cut before block 0).
        link_bandwidth: Bytes/s; a chain ``[n_nodes - 1]`` (link ``i`` joins nodes ``i`` and
            ``i+1``) or a matrix ``[n_nodes][n_nodes]`` of direct links. ``inf`` = free.
        link_latency: Seconds, same shape as ``link_bandwidth``.
        block_memory: ``[n_blocks]`` bytes a node must hold to run each block (parameters, buffers,
            and any activation workspace the caller wants to count); ``None`` = zeros.
        node_memory: ``[n_nodes]`` bytes each node may use for blocks; ``None`` = unlimited.
        stage_overhead: ``[n_nodes]`` seconds every active stage on a node pays per micro-batch on
            top of its blocks (e.g. dispatch and cache warm-up after idling); ``None`` = zeros.
        overlap_transfers: Whether a stage's outgoing transfer overlaps its compute (see the module
            docstring).
        wire_ratio: Bytes on the wire per byte of a float32 activation or input (the codec).

    Raises:
        ValueError: On inconsistent shapes or negative / non-finite values, naming the field.
    """

    block_latency: tuple[tuple[float, ...], ...]
    activation_bytes: tuple[float, ...]
    input_bytes: float
    link_bandwidth: tuple
    link_latency: tuple
    block_memory: tuple[float, ...] | None = None
    node_memory: tuple[float, ...] | None = None
    stage_overhead: tuple[float, ...] | None = None
    overlap_transfers: bool = False
    wire_ratio: float = 1.0

    def __post_init__(self) -> None:
        rows = self.block_latency
        if len(rows) == 0:
            raise ValueError("block_latency must have at least one node (row)")
        n_blocks = len(rows[0])
        if n_blocks == 0:
            raise ValueError("block_latency must have at least one block (column)")
        lat = tuple(_as_floats(f"block_latency[{i}]", row, n_blocks) for i, row in enumerate(rows))
        n_nodes = len(lat)
        set_ = object.__setattr__  # frozen dataclass: normalise once, here
        set_(self, "block_latency", lat)
        set_(self, "activation_bytes", _as_floats("activation_bytes", self.activation_bytes, n_blocks))
        if not (self.input_bytes >= 0 and math.isfinite(self.input_bytes)):
            raise ValueError(f"input_bytes must be a finite number >= 0, got {self.input_bytes!r}")
        set_(self, "input_bytes", float(self.input_bytes))
        set_(self, "link_bandwidth",
             _as_links("link_bandwidth", self.link_bandwidth, n_nodes, positive=True, allow_inf=True))
        set_(self, "link_latency",
             _as_links("link_latency", self.link_latency, n_nodes, positive=False, allow_inf=False))
        if self._is_matrix(self.link_bandwidth) != self._is_matrix(self.link_latency) and n_nodes > 1:
            raise ValueError("link_bandwidth and link_latency must both be chains or both be matrices")
        mem = [0.0] * n_blocks if self.block_memory is None else self.block_memory
        set_(self, "block_memory", _as_floats("block_memory", mem, n_blocks))
        limit = [math.inf] * n_nodes if self.node_memory is None else self.node_memory
        set_(self, "node_memory", _as_floats("node_memory", limit, n_nodes, allow_inf=True))
        overhead = [0.0] * n_nodes if self.stage_overhead is None else self.stage_overhead
        set_(self, "stage_overhead", _as_floats("stage_overhead", overhead, n_nodes))
        if not 0.0 < self.wire_ratio <= 1.0:
            raise ValueError(f"wire_ratio must be in (0, 1], got {self.wire_ratio!r}")

    @staticmethod
    def _is_matrix(links: tuple) -> bool:
        return len(links) > 0 and isinstance(links[0], tuple)

    @classmethod
    def from_speeds(
        cls,
        reference_latency: Sequence[float],
        speeds: Sequence[float],
        activation_bytes: Sequence[float],
        input_bytes: float,
        link_bandwidth: Sequence,
        link_latency: Sequence,
        block_memory: Sequence[float] | None = None,
        node_memory: Sequence[float] | None = None,
    ) -> PartitionProblem:
        """Build a problem by scaling block latencies measured on one reference node.

        Under the duty-cycle model of :mod:`eclm.serving.emulation`, a node with relative speed
        ``s`` (1.0 = the reference node) takes ``reference / s`` per block.

        Args:
            reference_latency: ``[n_blocks]`` seconds per block on the reference node.
            speeds: ``[n_nodes]`` relative speeds (> 0), e.g. CPU shares or monitor
                ``effective_speed`` values divided by the reference's.
            activation_bytes: See class attributes; the remaining arguments are passed through.
            input_bytes: See class attributes.
            link_bandwidth: See class attributes.
            link_latency: See class attributes.
            block_memory: See class attributes.
            node_memory: See class attributes.

        Returns:
            The :class:`PartitionProblem`.

        Raises:
            ValueError: If a speed is not positive and finite.
        """
        for i, s in enumerate(speeds):
            if not (s > 0 and math.isfinite(s)):
                raise ValueError(f"speeds[{i}] must be a positive finite number, got {s!r}")
        rows = tuple(tuple(float(t) / s for t in reference_latency) for s in speeds)
        return cls(rows, tuple(activation_bytes), input_bytes, tuple(link_bandwidth), tuple(link_latency),
                   None if block_memory is None else tuple(block_memory),
                   None if node_memory is None else tuple(node_memory))

    @property
    def n_nodes(self) -> int:
        return len(self.block_latency)

    @property
    def n_blocks(self) -> int:
        return len(self.block_latency[0])

    def cut_bytes(self, boundary: int) -> float:
        """Bytes crossing the cut before block ``boundary`` on the wire (0 = model input)."""
        return (self.input_bytes if boundary == 0 else self.activation_bytes[boundary - 1]) * self.wire_ratio

    def transfer_time(self, src: int, dst: int, nbytes: float) -> float:
        """Seconds to send ``nbytes`` from node ``src`` to a later node ``dst`` (0 if equal)."""
        if dst == src:
            return 0.0
        if not 0 <= src < dst < self.n_nodes:
            raise ValueError(f"transfer must go forward between nodes 0..{self.n_nodes - 1}, got {src}->{dst}")
        if self._is_matrix(self.link_bandwidth):
            return self.link_latency[src][dst] + nbytes / self.link_bandwidth[src][dst]
        return sum(self.link_latency[k] + nbytes / self.link_bandwidth[k] for k in range(src, dst))


@dataclass(frozen=True)
class PlanStage:
    """One active node's share of the chain.

    Attributes:
        node: Index of the node in the problem's ordered node list.
        start: First block (inclusive).
        stop: Last block (exclusive).
        compute_time: Seconds of compute for blocks ``[start, stop)`` on ``node`` (with the
            node's stage overhead).
        transfer_time: Seconds to send the activation after ``stop - 1`` to the next active node
            (0 for the last stage).
        memory_bytes: Bytes of ``block_memory`` the stage holds.
        overlap: Whether the transfer overlaps the compute (a pipeline step of its own).
    """

    node: int
    start: int
    stop: int
    compute_time: float
    transfer_time: float
    memory_bytes: float
    overlap: bool = False

    @property
    def cost(self) -> float:
        """Pipeline step time of this stage, seconds: compute + outgoing transfer, or the larger
        of the two when the transfer overlaps the compute."""
        if self.overlap:
            return max(self.compute_time, self.transfer_time)
        return self.compute_time + self.transfer_time

    @property
    def latency(self) -> float:
        """Seconds one micro-batch spends in this stage and its outgoing transfer."""
        return self.compute_time + self.transfer_time


@dataclass(frozen=True)
class PartitionPlan:
    """A contiguous assignment of blocks to nodes with its costs under the problem's model.

    Attributes:
        boundaries: ``[n_nodes + 1]`` block indices; node ``i`` runs ``[boundaries[i], boundaries[i+1])``.
        stages: Active stages in node order (nodes with zero blocks are absent).
        ingress_time: Seconds to move the input from node 0 to the first active node.
        fits_memory: Whether every stage fits its node's memory limit.
        method: Which partitioner produced the plan (for logs), e.g. ``"dp-throughput"``.
        codec: Wire codec of the activations between stages (``eclm.serving.wire``).
    """

    boundaries: tuple[int, ...]
    stages: tuple[PlanStage, ...]
    ingress_time: float
    fits_memory: bool
    method: str = "manual"
    codec: str = "float32"

    @property
    def bottleneck(self) -> float:
        """Slowest pipeline step, seconds: ``max(ingress, max stage cost)``."""
        return max([self.ingress_time] + [s.cost for s in self.stages])

    @property
    def latency(self) -> float:
        """End-to-end seconds of one request through an idle pipeline."""
        return self.ingress_time + sum(s.latency for s in self.stages)

    @property
    def throughput(self) -> float:
        """Steady-state requests per second of the pipeline (``1 / bottleneck``)."""
        return math.inf if self.bottleneck == 0 else 1.0 / self.bottleneck

    @property
    def active_nodes(self) -> tuple[int, ...]:
        return tuple(s.node for s in self.stages)

    def blocks_of(self, node: int) -> range:
        """Blocks assigned to ``node`` (empty range if the node is skipped)."""
        return range(self.boundaries[node], self.boundaries[node + 1])


def evaluate_plan(problem: PartitionProblem, boundaries: Sequence[int], method: str = "manual") -> PartitionPlan:
    """Cost a contiguous assignment under the problem's model.

    Args:
        problem: The partitioning problem.
        boundaries: ``[n_nodes + 1]`` non-decreasing ints from 0 to ``n_blocks``.
        method: Label stored in the plan.

    Returns:
        The :class:`PartitionPlan`; ``fits_memory`` tells whether memory limits hold.

    Raises:
        ValueError: If ``boundaries`` is malformed.
    """
    b = tuple(int(x) for x in boundaries)
    n, N = problem.n_nodes, problem.n_blocks
    if len(b) != n + 1 or b[0] != 0 or b[-1] != N or any(b[k] > b[k + 1] for k in range(len(b) - 1)):
        raise ValueError(f"boundaries must be {n + 1} non-decreasing ints from 0 to {N}, got {list(b)}")
    active = [i for i in range(n) if b[i] < b[i + 1]]
    stages = []
    for pos, node in enumerate(active):
        start, stop = b[node], b[node + 1]
        nxt = active[pos + 1] if pos + 1 < len(active) else None
        transfer = 0.0 if nxt is None else problem.transfer_time(node, nxt, problem.cut_bytes(stop))
        compute = math.fsum(problem.block_latency[node][start:stop]) + problem.stage_overhead[node]
        stages.append(PlanStage(node, start, stop, compute, transfer, math.fsum(problem.block_memory[start:stop]),
                                problem.overlap_transfers))
    ingress = problem.transfer_time(0, active[0], problem.cut_bytes(0))
    fits = all(s.memory_bytes <= problem.node_memory[s.node] for s in stages)
    return PartitionPlan(b, tuple(stages), ingress, fits, method)
