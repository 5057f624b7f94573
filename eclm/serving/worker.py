"""One (emulated) edge node hosting a contiguous stage of the served model: the stage actor's core.

:class:`StageWorker` is a plain class; ``eclm.actors.serving`` turns it into the stage actor with
``ray.remote``. Every method takes and returns tensors, bytes or JSON-able dicts. The worker

* rebuilds the model from architecture + safetensors weights and keeps only its block range,
* profiles its blocks on the node it emulates (per-block seconds at the served batch size),
* runs forward passes paced to the node's CPU share and outgoing link (:class:`NodePacer`),
* feeds every measured block time into its :class:`ResourceMonitor` and reports the monitor's
  smoothed latencies and change events with each result, so the coordinator sees a slowed node
  without asking.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from eclm.serving.config import ServingConfig
from eclm.serving.heap import retain_heap
from eclm.serving.model_source import build_chain
from eclm.serving.monitor import NodeResources, ResourceMonitor
from eclm.serving.pacing import NodePacer
from eclm.serving.stages import block_memory_bytes, payload_nbytes
from eclm.serving.wire import StageMessage, decode, encode

_WARMUP_FORWARDS = 2


class NodeSettings(BaseModel):
    """What a stage actor needs to know about the node it runs (or emulates)."""

    model_config = ConfigDict(extra="forbid")

    node: int = Field(ge=0, description="Index of the node in pipeline order.")
    cpu_share: float = Field(gt=0.0, le=1.0, description="CPU share of the node.")
    memory_bytes: float | None = Field(None, gt=0, description="Memory limit of the node, bytes (None = machine).")
    link_bandwidth: float = Field(gt=0.0, description="Bytes/s of each outgoing link hop.")
    link_latency: float = Field(ge=0.0, description="Seconds per message per link hop.")
    emulate: bool = Field(True, description="Pace compute and links to the emulated node.")
    emulation_scale: float = Field(1.0, gt=0.0, le=1.0, description="Host-core fraction of a 1.0-share node.")
    overlap: bool = Field(True, description="The outgoing link sends while the stage computes the next micro-batch.")
    monitor_alpha: float = Field(0.3, gt=0.0, le=1.0)
    monitor_threshold: float = Field(0.25, gt=0.0)
    monitor_interval_s: float = Field(1.0, gt=0.0)
    threads: int = Field(1, ge=1)
    heap_retain_mib: int = Field(0, ge=0, le=2047, description="Freed MiB the process keeps mapped (0: as it is).")

    @classmethod
    def from_config(cls, config: ServingConfig, node: int) -> NodeSettings:
        """Settings of node ``node`` of a serving config.

        Raises:
            ValueError: If ``node`` is not a node of ``config``.
        """
        if not 0 <= node < config.n_nodes:
            raise ValueError(f"node must be in [0, {config.n_nodes}), got {node}")
        return cls(
            node=node, cpu_share=config.node_cpu_shares[node],
            memory_bytes=None if config.node_memory_bytes is None else config.node_memory_bytes[node],
            link_bandwidth=config.link_bandwidth_bytes_per_s, link_latency=config.link_latency_s,
            emulate=config.emulate, emulation_scale=config.emulation_scale, overlap=config.overlap_transfers,
            monitor_alpha=config.monitor_alpha, monitor_threshold=config.monitor_threshold,
            monitor_interval_s=config.monitor_interval_s, threads=config.stage_threads,
            heap_retain_mib=config.heap_retain_mib,
        )


class StageWorker:
    """A node's stage of the served model.

    Args:
        settings: :class:`NodeSettings` or its dict.
        sleep: Sleep function used for pacing (tests pass a recorder).
    """

    def __init__(self, settings: NodeSettings | Mapping[str, Any], sleep=time.sleep) -> None:
        self._sleep = sleep
        self.settings = NodeSettings.model_validate(dict(settings) if isinstance(settings, Mapping) else settings)
        self.blocks: list[tuple[str, torch.nn.Module]] = []
        self.start = 0
        self.n_chain = 0
        self.input_size: tuple[int, ...] = ()
        self._configure()

    # ------------------------------------------------------------------ node
    def _configure(self) -> None:
        s = self.settings
        torch.set_num_threads(s.threads)
        retain_heap(s.heap_retain_mib * 2**20)
        self.pacer = NodePacer(s.cpu_share, s.link_bandwidth, s.link_latency, emulate=s.emulate,
                               overlap=s.overlap, scale=s.emulation_scale, sleep=self._sleep)
        self._new_monitor()

    def _new_monitor(self) -> None:
        s = self.settings
        # An emulated node has no other tenants: its CPU load reading is 0, so the monitor's
        # effective speed is its share and moves only when the share does. A real node reads psutil.
        self.monitor = ResourceMonitor(
            s.monitor_alpha, s.monitor_threshold, cpu_share=s.cpu_share, mem_limit=s.memory_bytes,
            bandwidth=s.link_bandwidth, latency=s.link_latency,
            cpu_percent=(lambda: 0.0) if s.emulate else None,
        )
        self._last_poll = time.monotonic()
        self._warmup = _WARMUP_FORWARDS
        self.monitor.sample()

    def configure_node(self, settings: Mapping[str, Any]) -> dict:
        """Replace the node settings (keeps the loaded blocks); returns :meth:`status`."""
        self.settings = NodeSettings.model_validate(dict(settings))
        self._configure()
        return self.status()

    def set_cpu_share(self, cpu_share: float) -> dict:
        """Emulate a change of this node's CPU capacity (another tenant, throttling, recovery).

        Raises:
            ValueError: If ``cpu_share`` is not in (0, 1].
        """
        self.pacer.set_cpu_share(cpu_share)
        self.settings = self.settings.model_copy(update={"cpu_share": float(cpu_share)})
        self.monitor.cpu_share = float(cpu_share)
        return self.status()

    # ------------------------------------------------------------------ model
    def load(self, architecture: Mapping[str, Any], payload: bytes, start: int = 0, stop: int | None = None) -> dict:
        """Rebuild the model from architecture + weights and keep blocks ``[start, stop)``.

        Args:
            architecture: :meth:`ModelSource.architecture`.
            payload: Safetensors bytes with the spec in the header.
            start: First block kept.
            stop: One past the last block kept (``None``: to the end). ``start == stop`` keeps
                nothing (an idle node).

        Returns:
            :meth:`status` after loading.

        Raises:
            ValueError: If the range is outside the chain or the weights do not match.
        """
        chain = build_chain(architecture, payload)
        stop = len(chain) if stop is None else stop
        if not 0 <= start <= stop <= len(chain):
            raise ValueError(f"block range [{start}, {stop}) is outside the chain of {len(chain)} blocks")
        self.n_chain = len(chain)
        self.input_size = tuple(int(d) for d in architecture["input_size"])
        self.blocks, self.start = chain[start:stop], start  # the other blocks are freed here
        self._new_monitor()
        return self.status()

    def keep(self, start: int, stop: int) -> dict:
        """Narrow the held blocks to ``[start, stop)`` without reloading (must lie inside them).

        Raises:
            ValueError: If ``[start, stop)`` is not inside the held range.
        """
        held_stop = self.start + len(self.blocks)
        if not (self.start <= start <= stop <= held_stop):
            raise ValueError(f"cannot keep [{start}, {stop}): this node holds [{self.start}, {held_stop})")
        self.blocks = self.blocks[start - self.start:stop - self.start]
        self.start = start
        self._new_monitor()
        return self.status()

    @property
    def stop(self) -> int:
        return self.start + len(self.blocks)

    # ------------------------------------------------------------------ profiling
    @torch.no_grad()
    def profile(self, batch_size: int, repeats: int = 5, warmup: int = 1, seed: int = 0) -> dict:
        """Per-block seconds on this node for inputs of ``batch_size`` (the held blocks).

        Each repeat runs the held chain once on a fixed random input; the median over repeats is
        reported (single timings are skewed by OS noise). Times are node seconds: CPU time
        divided by the emulated share (wall time on a real node).

        Args:
            batch_size: Requests per forward pass (the micro-batch size being served).
            repeats: Timed runs (>= 1).
            warmup: Untimed runs first (>= 0).
            seed: Seed of the random input.

        Returns:
            ``{"node", "cpu_share", "start", "stop", "block_seconds", "input_bytes",
            "activation_bytes", "block_memory"}`` (lists over the held blocks).

        Raises:
            RuntimeError: If the node holds no blocks or its first block is not the model's stem.
            ValueError: If ``batch_size``, ``repeats`` or ``warmup`` is out of range.
        """
        if not self.blocks:
            raise RuntimeError(f"node {self.settings.node} holds no blocks to profile")
        if self.start != 0:
            raise RuntimeError("profile needs the chain from block 0 (load with start=0 first)")
        for name, value, low in (("batch_size", batch_size, 1), ("repeats", repeats, 1), ("warmup", warmup, 0)):
            if not (isinstance(value, int) and value >= low):
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        gen = torch.Generator().manual_seed(seed)
        example = torch.randn(batch_size, *self.input_size, generator=gen)
        timings: list[list[float]] = [[] for _ in self.blocks]
        activation: list[int] = []
        for run in range(warmup + repeats):
            x = example
            for k, (_, block) in enumerate(self.blocks):
                x, seconds, _ = self.pacer.timed(block, x)
                if run >= warmup:
                    timings[k].append(seconds)
                if run == 0:
                    activation.append(payload_nbytes(x))
        return {
            "node": self.settings.node, "cpu_share": self.settings.cpu_share, "start": self.start, "stop": self.stop,
            "block_seconds": [statistics.median(t) for t in timings], "input_bytes": payload_nbytes(example),
            "activation_bytes": activation, "block_memory": block_memory_bytes([b for _, b in self.blocks]),
        }

    # ------------------------------------------------------------------ serving
    @torch.no_grad()
    def forward(self, message: StageMessage, ticket: Mapping[str, Any]) -> StageMessage:
        """Run the held blocks on a micro-batch, paced to the emulated node, and send it on.

        The stage waits until the message has arrived over the emulated link, decodes it, runs
        its blocks, encodes the output with the ticket's codec, paces the node's compute (and,
        without overlap, the outgoing link) and stamps the output's arrival time on the next node.

        Args:
            message: The micro-batch entering this stage (:class:`~eclm.serving.wire.StageMessage`).
            ticket: ``{"batch_id", "hops_out"`` (link hops to the next active node, 0 for the
                last stage), ``"codec"`` (of the output, default float32), ``"monitor"`` (record
                block times: a full micro-batch)}.

        Returns:
            The output message; its ``timings`` end with this stage's: node seconds of compute
            (``compute_s``, encode/decode included, ``codec_s`` of it) and of the outgoing link
            (``link_s``), CPU seconds, wall seconds spent here (``wall_s``) and waiting for the
            input to arrive (``wait_s``), per-block node seconds, the monitor's smoothed block
            latencies and any change events.

        Raises:
            RuntimeError: If the node holds no blocks.
        """
        if not self.blocks:
            raise RuntimeError(f"node {self.settings.node} holds no blocks but was sent a micro-batch")
        entered = time.time()
        waited = self.pacer.wait_arrival(message.arrive_at)
        wall0 = self.pacer.now()
        x, decode_s, decode_cpu = self.pacer.timed(decode, message)
        block_s: list[float] = []
        cpu = decode_cpu
        for _, block in self.blocks:
            x, seconds, used = self.pacer.timed(block, x)
            block_s.append(seconds)
            cpu += used
        codec = str(ticket.get("codec", "float32"))
        out, encode_s, encode_cpu = self.pacer.timed(encode, x, codec, message.batch_id, message.timings)
        compute = math.fsum(block_s) + decode_s + encode_s
        # The first passes after (re)loading run on cold caches and allocators; keep them out of
        # the monitor, whose first reading would otherwise anchor the average too high.
        monitor = bool(ticket.get("monitor", True)) and self._warmup <= 0
        self._warmup -= 1
        if monitor:
            for k, seconds in enumerate(block_s):
                self.monitor.record_block_latency(self.start + k, seconds)
        events = self._poll_events() if monitor else []
        link, slept = self._send(out, wall0, compute, int(ticket.get("hops_out", 0)))
        smoothed = self.monitor.block_latencies()
        out.timings.append(self._timing(
            ticket, entered, wall0, compute, link, waited, slept, int(x.shape[0]), cpu + encode_cpu,
            codec_s=decode_s + encode_s, block_s=block_s, events=events, monitored=monitor,
            smoothed={b: smoothed[b] for b in range(self.start, self.stop) if b in smoothed}, wire_bytes=out.nbytes))
        return out

    def relay(self, message: StageMessage, ticket: Mapping[str, Any]) -> StageMessage:
        """Send a micro-batch on without computing: the entry node forwarding the input.

        Args:
            message: The model input micro-batch.
            ticket: ``{"batch_id", "hops_out"`` (link hops to the first active node), ``"codec"``
                (of the forwarded input; default: as received)}.

        Returns:
            The message (re-encoded if the ticket's codec differs), stamped with its arrival at
            the first active node; its timings end with this hop's (``compute_s``: the
            re-encoding only, the link time in ``link_s``).
        """
        entered = time.time()
        waited = self.pacer.wait_arrival(message.arrive_at)
        wall0 = self.pacer.now()
        codec, compute, cpu = str(ticket.get("codec", message.codec)), 0.0, 0.0
        if codec != message.codec:
            x, decode_s, decode_cpu = self.pacer.timed(decode, message)
            message, encode_s, encode_cpu = self.pacer.timed(encode, x, codec, message.batch_id, message.timings)
            compute, cpu = decode_s + encode_s, decode_cpu + encode_cpu
        link, slept = self._send(message, wall0, compute, int(ticket.get("hops_out", 0)))
        message.timings.append(self._timing(
            ticket, entered, wall0, compute, link, waited, slept, int(message.data.shape[0]), cpu, codec_s=compute,
            block_s=[], events=[], monitored=False, smoothed={}, wire_bytes=message.nbytes, start=0, stop=0))
        return message

    def _send(self, message: StageMessage, wall0: float, compute: float, hops: int) -> tuple[float, float]:
        """Pace the stage and put ``message`` on the link; returns ``(link seconds, seconds slept)``."""
        overlap = self.pacer.overlap
        link = self.pacer.link_seconds(message.nbytes, hops)
        slept = self.pacer.pace_until(wall0, compute if overlap else compute + link)
        message.arrive_at = self.pacer.send(message.nbytes, hops)[1]
        return link, slept

    def _timing(self, ticket: Mapping[str, Any], entered: float, wall0: float, compute: float, link: float,
                waited: float, slept: float, batch_size: int, cpu: float, **extra: Any) -> dict:
        return {
            "batch_id": ticket.get("batch_id"), "node": self.settings.node, "start": self.start, "stop": self.stop,
            "batch_size": batch_size, "compute_s": compute, "link_s": link, "overlap": self.pacer.overlap,
            "cpu_s": cpu, "wall_s": self.pacer.now() - wall0, "wait_s": waited, "slept_s": slept,
            "cpu_share": self.settings.cpu_share, "codec": str(ticket.get("codec", "float32")),
            "started_at": entered, "finished_at": time.time(), **extra,
        }

    def _poll_events(self) -> list[dict]:
        now = time.monotonic()
        if now - self._last_poll < self.settings.monitor_interval_s:
            return []
        self._last_poll = now
        self.monitor.sample()
        return [{"node": self.settings.node, "quantity": e.quantity, "previous": e.previous,
                 "current": e.current} for e in self.monitor.poll()]

    # ------------------------------------------------------------------ status
    def status(self) -> dict:
        """Node facts for the coordinator: held range, smoothed resources, pending events."""
        snap: NodeResources | None = self.monitor.snapshot()
        return {
            "node": self.settings.node, "cpu_share": self.settings.cpu_share, "start": self.start, "stop": self.stop,
            "n_chain": self.n_chain, "held_bytes": sum(block_memory_bytes([b for _, b in self.blocks])),
            "resources": None if snap is None else asdict(snap),
            "smoothed": self.monitor.block_latencies(),
            "events": self._poll_events(),
        }

    def ping(self) -> int:
        """Liveness check; returns the node index."""
        return self.settings.node

