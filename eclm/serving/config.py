"""Configuration of partitioned inference serving (AMP4EC done honestly)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from eclm.resources import NODE_LABEL_VALUE_PATTERN

_GIB, _MIB = 1024**3, 1024**2

#: Wire codecs of activations between stages (``eclm.serving.wire``), and the bytes each puts on
#: the wire per byte of a float32 activation (int8's scale and offset are 16 bytes per message).
CODECS: tuple[str, ...] = ("float32", "float16", "int8")
WIRE_RATIO: dict[str, float] = {"float32": 1.0, "float16": 0.5, "int8": 0.25}


class ServingConfig(BaseModel):
    """Partitioned, adaptive inference across (emulated) edge nodes.

    The defaults reproduce AMP4EC's testbed: three nodes with 1.0 / 0.6 / 0.4 CPU and
    1 GiB / 512 MiB / 512 MiB, batch size 1.
    """

    model_config = ConfigDict(extra="forbid")

    partitioner: Literal["dp", "proportional", "monolithic"] = Field(
        "dp", description="dp = optimal contiguous partition (eclm); proportional = AMP4EC's "
        "CPU-share-proportional runs; monolithic = whole model on node 0.")
    objective: Literal["throughput", "latency"] = Field(
        "throughput", description="What the dp partitioner minimises: pipeline bottleneck or end-to-end latency.")
    plan_tolerance: float = Field(
        0.02, ge=0.0, lt=0.5, description="dp, throughput: among plans whose predicted bottleneck is within this "
        "fraction of the optimum, take the lowest-latency one (fewer hops); profiles are noisy by a few percent.")
    scheduler: Literal["amp4ec", "round_robin", "least_loaded"] = Field(
        "amp4ec", description="Request scheduling policy.")
    scheduler_seed: int = Field(0, ge=0, description="Seed of the scheduler's tie-breaking generator.")
    max_load: float = Field(0.8, gt=0.0, le=1.0, description="AMP4EC filter: skip nodes with load above this.")
    max_latency_s: float = Field(0.5, gt=0.0, description="AMP4EC filter: skip nodes with latency above this (s).")

    monitor_alpha: float = Field(0.3, gt=0.0, le=1.0, description="EWMA weight of a new monitor reading.")
    monitor_threshold: float = Field(
        0.25, gt=0.0, le=10.0, description="Relative change of a smoothed quantity that emits a resource event.")
    monitor_interval_s: float = Field(1.0, gt=0.0, description="Seconds between monitor samples.")

    repartition: bool = Field(True, description="Re-partition when the monitor reports resource changes.")
    repartition_min_gain: float = Field(
        0.1, ge=0.0, lt=1.0, description="Switch plans only if the objective improves by at least this fraction.")

    max_in_flight: int = Field(8, ge=1, description="Requests admitted into the pipeline at once.")
    micro_batch_size: int = Field(
        1, ge=1, description="Requests grouped into one forward pass (with micro_batch_policy=auto: the largest "
        "size the planner may choose; the deployment's config then holds the chosen one).")
    micro_batch_policy: Literal["fixed", "auto"] = Field(
        "fixed", description="fixed = micro_batch_size; auto = profile the nodes at powers of two up to "
        "micro_batch_size and take the size with the highest predicted rate (within latency_slo_s).")
    latency_slo_s: float | None = Field(
        None, gt=0.0, description="micro_batch_policy=auto: largest predicted unloaded latency of a micro-batch "
        "through the pipeline, seconds (None = no limit).")
    profile_repeats: int = Field(5, ge=1, le=1000, description="Timed runs per block when profiling latencies.")

    node_cpu_shares: list[float] = Field(
        default_factory=lambda: [1.0, 0.6, 0.4], min_length=1,
        description="Emulated CPU share of each node, in (0, 1], in pipeline order.")
    node_memory_bytes: list[float] | None = Field(
        default_factory=lambda: [float(_GIB), float(512 * _MIB), float(512 * _MIB)],
        description="Memory limit per node in bytes (same length as node_cpu_shares); None = unlimited.")
    link_bandwidth_bytes_per_s: float = Field(
        12.5e6, gt=0.0, description="Emulated bandwidth of each link between consecutive nodes (inf = free).")
    link_latency_s: float = Field(0.001, ge=0.0, description="Emulated latency of each link, seconds.")
    overlap_transfers: bool = Field(
        True, description="Asynchronous hand-off: a stage's output is sent while the stage computes the next "
        "micro-batch (each link is a pipeline step of its own, as Ray moves objects outside the actor); False = "
        "the stage is busy until its send completes.")
    activation_codec: Literal["auto", "float32", "float16", "int8"] = Field(
        "auto", description="Encoding of activations between stages: auto = float16 where that lowers the "
        "predicted pipeline bottleneck by at least 5% (links limit it), else float32; int8 (per-tensor affine) "
        "only when asked for.")

    # ---------------------------------------------------------------- deployment (Ray executor)
    placement: Literal["pipeline", "replicas"] = Field(
        "pipeline", description="pipeline = one model cut into contiguous stages over the nodes (partitioner "
        "applies); replicas = a whole-model replica per node, each request placed by the scheduler.")
    emulate: bool = Field(
        True, description="Emulate heterogeneous nodes on this machine: pace each stage actor's compute to its "
        "CPU share (duty cycle) and sleep link delays. False on a real cluster of real nodes.")
    emulation_scale: float = Field(
        1.0, gt=0.0, le=1.0, description="Fraction of one host core that a node of cpu_share 1.0 gets when "
        "emulating; below 1 leaves headroom for Ray and the driver on small machines (e.g. 0.5 on 2 cores).")
    node_labels: list[str] | None = Field(
        None, description="Real cluster: pin stage actor i to the node labelled eclm/node=<label> "
        "(same length as node_cpu_shares); None = place anywhere.")
    stage_actor_cpus: float = Field(0.1, gt=0.0, description="Ray num_cpus reserved by each stage actor.")
    stage_threads: int = Field(1, ge=1, le=64, description="torch threads per stage actor.")
    heap_retain_mib: int = Field(
        64, ge=0, le=2047, description="MiB of freed memory a stage actor's process keeps mapped between "
        "micro-batches (glibc malloc), so large activations are not page-faulted in again for every micro-batch "
        "(eclm/serving/heap.py: ResNet-18 at 128 px, micro-batch 8: 34.1 -> 26.3 ms per forward); 0 leaves the "
        "C library's defaults.")
    max_retries: int = Field(3, ge=0, le=100, description="Re-runs of a request whose pipeline failed.")
    request_timeout_s: float = Field(
        60.0, gt=0.0, description="A micro-batch in flight longer than this counts as failed (hung stage).")
    repartition_cooldown_s: float = Field(
        2.0, ge=0.0, description="Minimum seconds between two re-partitions (lets new measurements settle).")

    @field_validator("node_cpu_shares")
    @classmethod
    def _shares_in_range(cls, shares: list[float]) -> list[float]:
        for i, s in enumerate(shares):
            if not 0.0 < s <= 1.0:
                raise ValueError(f"node_cpu_shares[{i}] must be in (0, 1], got {s}")
        return shares

    @field_validator("node_memory_bytes")
    @classmethod
    def _memory_positive(cls, memory: list[float] | None) -> list[float] | None:
        for i, m in enumerate(memory or []):
            if not m > 0:
                raise ValueError(f"node_memory_bytes[{i}] must be > 0, got {m}")
        return memory

    @field_validator("node_labels")
    @classmethod
    def _labels_clean(cls, labels: list[str] | None) -> list[str] | None:
        for i, label in enumerate(labels or []):
            if not isinstance(label, str) or not re.fullmatch(NODE_LABEL_VALUE_PATTERN, label):
                raise ValueError(f"node_labels[{i}] must be a Ray label value (1-63 characters [A-Za-z0-9_.-], "
                                 f"alphanumeric at both ends), got {label!r}")
        return labels

    @field_validator("link_latency_s")
    @classmethod
    def _latency_finite(cls, latency: float) -> float:
        if not math.isfinite(latency):
            raise ValueError(f"link_latency_s must be finite, got {latency}")
        return latency

    @model_validator(mode="after")
    def _consistent(self) -> ServingConfig:
        if self.node_memory_bytes is not None and len(self.node_memory_bytes) != len(self.node_cpu_shares):
            raise ValueError(
                f"node_memory_bytes has {len(self.node_memory_bytes)} entries but node_cpu_shares has "
                f"{len(self.node_cpu_shares)}; give one per node"
            )
        if self.micro_batch_size > self.max_in_flight:
            raise ValueError(
                f"micro_batch_size={self.micro_batch_size} exceeds max_in_flight={self.max_in_flight}; "
                "a micro-batch could never fill"
            )
        if self.repartition and self.partitioner == "monolithic":
            raise ValueError("repartition=True is meaningless with partitioner='monolithic'; set repartition=False")
        if self.node_labels is not None and len(self.node_labels) != len(self.node_cpu_shares):
            raise ValueError(
                f"node_labels has {len(self.node_labels)} entries but node_cpu_shares has "
                f"{len(self.node_cpu_shares)}; give one per node"
            )
        return self

    @property
    def n_nodes(self) -> int:
        return len(self.node_cpu_shares)

    def with_nodes(self, nodes: Sequence[float | Mapping[str, Any]]) -> ServingConfig:
        """A copy describing other nodes.

        Args:
            nodes: One entry per node in pipeline order: a CPU share in (0, 1], or a mapping with
                ``cpu_share`` and optionally ``memory_bytes`` and ``label`` (a Ray node label).

        Returns:
            The validated copy (memory limits become unlimited unless every node gives one; labels
            are kept only if every node gives one).

        Raises:
            TypeError: If an entry is neither a number nor a mapping.
            ValueError: If an entry lacks ``cpu_share``, has unknown keys, or a value is out of range.
        """
        if isinstance(nodes, (str, bytes)) or not isinstance(nodes, Sequence) or len(nodes) == 0:
            raise ValueError(f"nodes must be a non-empty list of CPU shares or node mappings, got {nodes!r}")
        shares: list[float] = []
        memory: list[float | None] = []
        labels: list[str | None] = []
        for i, node in enumerate(nodes):
            if isinstance(node, (int, float)) and not isinstance(node, bool):
                shares.append(float(node))
                memory.append(None)
                labels.append(None)
                continue
            if not isinstance(node, Mapping):
                raise TypeError(f"nodes[{i}] must be a CPU share or a mapping, got {type(node).__name__}")
            unknown = sorted(set(node) - {"cpu_share", "memory_bytes", "label"})
            if unknown or "cpu_share" not in node:
                raise ValueError(f"nodes[{i}] needs 'cpu_share' and only 'memory_bytes'/'label' besides, "
                                 f"got keys {sorted(node)}")
            shares.append(float(node["cpu_share"]))
            memory.append(node.get("memory_bytes"))
            labels.append(node.get("label"))
        update = {
            "node_cpu_shares": shares,
            "node_memory_bytes": None if any(m is None for m in memory) else [float(m) for m in memory],
            "node_labels": None if any(lb is None for lb in labels) else labels,
        }
        return type(self).model_validate({**self.model_dump(), **update})
