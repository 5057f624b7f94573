"""Driver side of partitioned serving: the pipeline coordinator (the serving code that uses Ray).

A :class:`Deployment` serves one model (the cloud model or a device's sub-model) over a
:class:`~eclm.actors.serving.StagePool` of stage actors, one per (emulated) node:

1. every node loads the whole model from architecture + safetensors weights and is profiled on
   itself; the configured partitioner cuts the chain into contiguous stages from those numbers
   and each node keeps only its blocks;
2. requests queue in a :class:`~eclm.serving.requests.RequestLedger`; micro-batches go through
   the stages as chained actor calls, each stage's output handed to the next as a Ray object ref
   (the driver never touches activations), with at most ``max_in_flight`` requests in flight;
3. a failed micro-batch (a stage died or hung) is re-queued at the front; dead stages are replaced
   and reload their blocks, so no request is lost;
4. stages report smoothed block latencies and monitor events with their results; the
   :class:`~eclm.serving.adaptation.RepartitionPolicy` decides when a new cut is worth it, and the
   coordinator drains the pipeline and re-deploys it;
5. with ``placement="replicas"`` each node holds the whole model and the request scheduler places
   every micro-batch.

The coordinator runs in the caller's thread: :meth:`Deployment.submit` dispatches at once, and
results are collected whenever the caller waits (``handle.result()``, ``wait``, ``infer``, ``poll``).
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import ray
import torch
from ray.exceptions import RayError
from torch import Tensor

from eclm.actors.serving import StagePool
from eclm.runtime.serving_events import SessionEvents
from eclm.runtime.serving_handles import Flight, RequestHandle
from eclm.serving.adaptation import RepartitionPolicy
from eclm.serving.batching import MicroBatchChoice, candidate_sizes, choose_micro_batch
from eclm.serving.config import ServingConfig
from eclm.serving.model_source import ModelSource
from eclm.serving.partition_problem import PartitionPlan
from eclm.serving.placement import busy_fraction, replica_states
from eclm.serving.planning import NodeProfile, StageRoute, build_problem, make_plan, routes_for
from eclm.serving.requests import RequestLedger, RequestRecord
from eclm.serving.scheduler import create_scheduler
from eclm.serving.session_log import plan_costs, plan_record
from eclm.serving.session_stats import summarize, throughput_timeline
from eclm.serving.wire import decode, encode

log = logging.getLogger("eclm.serving")

_PROBE_TIMEOUT_S = 20.0


class Deployment:
    """A model served over stage actors; see the module docstring.

    Args:
        source: The model (architecture + weights).
        config: Serving settings.
        tracker: A started :class:`~eclm.tracking.CampaignTracker` to log the session to, or ``None``.
        name: Session name (used in MLflow keys; letters, digits, ``_-.``).
        pool: Existing stage actors to reuse (reconfigured to ``config``); a new pool otherwise.
            A deployment closes only a pool it created.

    Raises:
        ValueError: If the model cannot be partitioned over the nodes (e.g. memory).
        RuntimeError: If stage actors fail to start or load the model.
    """

    def __init__(self, source: ModelSource, config: ServingConfig, *, tracker=None, name: str = "serve",
                 pool: StagePool | None = None) -> None:
        self.source, self.config, self.tracker, self.name = source, config, tracker, name
        self.session = SessionEvents(name, tracker)
        self.monitor_events: deque[dict] = deque(maxlen=1000)
        self.ledger = RequestLedger(config.max_in_flight, config.micro_batch_size, config.max_retries,
                                    source.input_size)
        self.scheduler = create_scheduler(config.scheduler, seed=config.scheduler_seed, max_load=config.max_load,
                                          max_latency=config.max_latency_s)
        self._flight: dict[int, Flight] = {}
        self._admitting = True
        self._busy: list[deque[tuple[float, float]]] = [deque() for _ in range(config.n_nodes)]
        self._status_refs: dict[int, Any] = {}
        self._closed = False
        self._owns_pool = pool is None
        self.pool = StagePool(config) if pool is None else pool
        try:
            if pool is not None:
                pool.configure(config)
            self._deploy()
        except Exception:
            if self._owns_pool:
                self.pool.close()
            raise

    # ------------------------------------------------------------------ deploy
    def _deploy(self) -> None:
        cfg = self.config
        t0 = time.perf_counter()
        self._architecture = self.source.architecture()
        self._payload_ref = ray.put(self.source.payload)
        loaded = ray.get([a.load.remote(self._architecture, self._payload_ref, 0, None) for a in self.pool.actors])
        self.n_blocks = loaded[0]["n_chain"]
        t1 = time.perf_counter()
        self.profiles = self._profile_and_size()
        cfg = self.config
        t2 = time.perf_counter()
        self.problem = build_problem(self.profiles, cfg)
        self._need_bytes = sum(self.profiles[0].block_memory) + max(self.profiles[0].activation_bytes)
        self._replicas: list[int] = []
        if cfg.placement == "pipeline":
            self.plan = make_plan(self.problem, cfg)
            ray.get([a.keep.remote(self.plan.boundaries[i], self.plan.boundaries[i + 1])
                     for i, a in enumerate(self.pool.actors)])
            self._routes = routes_for(self.plan)
        else:
            self.plan = make_plan(self.problem, cfg, "monolithic")
            limits = cfg.node_memory_bytes or [math.inf] * cfg.n_nodes
            model_bytes = sum(self.profiles[0].block_memory)
            self._replicas = [i for i in range(cfg.n_nodes) if model_bytes <= limits[i]]
            if not self._replicas:
                raise ValueError(f"no node can hold the whole model ({model_bytes:.0f} B) for replicas; "
                                 f"node_memory_bytes={cfg.node_memory_bytes}")
            self._routes = ()
        self.policy = RepartitionPolicy(self.profiles, cfg, self.plan, time.monotonic())
        self.session.started_at = time.time()
        self._record({"kind": "deploy", "placement": cfg.placement, "partitioner": cfg.partitioner,
                      "boundaries": list(self.plan.boundaries), "load_s": t1 - t0, "profile_s": t2 - t1,
                      "predicted": plan_costs(self.plan, cfg.micro_batch_size), "micro_batch": cfg.micro_batch_size,
                      "micro_batch_choice": None if self.batching is None else {
                          "rates": self.batching.rates, "latencies": self.batching.latencies,
                          "reason": self.batching.reason}})
        record = plan_record(self.name, self.source.name, self.source.meta, cfg, self.n_blocks, self.plan,
                             self.profiles, self._replicas)
        self._track(lambda t: t.log_json(f"serving/{self.name}/plan.json", record))

    def _profile_and_size(self) -> list[NodeProfile]:
        """Profile every node at the micro-batch size, or (``micro_batch_policy="auto"``) at every
        candidate size and settle the size; returns the profiles at the size served."""
        cfg = self.config
        auto = cfg.micro_batch_policy == "auto"
        sizes = candidate_sizes(cfg.micro_batch_size) if auto else (cfg.micro_batch_size,)
        # One node at a time: profiles taken while other nodes compute would share the host's cores.
        by_size = {b: [self._profile(a, b) for a in self.pool.actors] for b in sizes}
        self.batching: MicroBatchChoice | None = None
        if auto:
            self.batching = choose_micro_batch({b: make_plan(build_problem(p, cfg), cfg) for b, p in by_size.items()},
                                               cfg.latency_slo_s)
            self.config = cfg.model_copy(update={"micro_batch_size": self.batching.size})
            self.ledger.micro_batch_size = self.batching.size
        return by_size[self.config.micro_batch_size]

    def _profile(self, actor, batch: int) -> NodeProfile:
        """Isolated per-block profile at micro-batch ``batch``, calibrated by serving the whole chain
        as one stage."""
        cfg = self.config
        isolated = NodeProfile.from_dict(ray.get(actor.profile.remote(batch, cfg.profile_repeats)))
        x = torch.randn(batch, *self.source.input_size, generator=torch.Generator().manual_seed(0))
        warmup = 2
        served: list[list[float]] = []
        for k in range(warmup + cfg.profile_repeats):
            out = ray.get(actor.forward.remote(encode(x), {"batch_id": -1, "monitor": False}))
            if k >= warmup:
                served.append(out.timings[-1]["block_s"])
        return isolated.calibrated([statistics.median(col) for col in zip(*served, strict=True)])

    # ------------------------------------------------------------------ client API
    @property
    def stage_actors(self) -> list:
        """The stage actor handles, by node (for inspection and fault-injection tests)."""
        return list(self.pool.actors)

    def submit(self, x: Tensor) -> RequestHandle:
        """Queue one request and dispatch it if the pipeline has room (never blocks).

        Args:
            x: One input of shape ``input_size`` (or ``(1, *input_size)``).

        Returns:
            The request's :class:`RequestHandle`.

        Raises:
            RuntimeError: If the deployment is closed.
            TypeError, ValueError: If ``x`` is not a tensor of the model's input shape.
        """
        self._check_open()
        rid = self.ledger.submit(x, time.time())
        self._admit()
        return RequestHandle(self, rid)

    def submit_many(self, batch: Tensor) -> list[RequestHandle]:
        """Queue every row of ``batch`` (``(N, *input_size)``) as its own request."""
        self._check_open()
        handles = [RequestHandle(self, self.ledger.submit(row, time.time())) for row in batch]
        self._admit()
        return handles

    def wait(self, handles: Sequence[RequestHandle], timeout: float | None = None) -> None:
        """Run the coordinator until every handle is done.

        Raises:
            TimeoutError: If they are not all done within ``timeout`` seconds.
        """
        ids = [h.request_id for h in handles]
        if not self._pump(lambda: self.ledger.all_done(ids), timeout):
            left = sum(1 for i in ids if not self.ledger.records[i].done)
            raise TimeoutError(f"{left} of {len(ids)} requests not done within {timeout} s")

    def infer(self, batch: Tensor, timeout: float | None = None) -> tuple[Tensor, list[dict[str, Any]]]:
        """Serve every row of ``batch`` and return the outputs with per-request timings.

        Args:
            batch: ``(N, *input_size)`` inputs; rows are separate requests (micro-batched by the
                deployment).
            timeout: Seconds to wait for all of them.

        Returns:
            ``(outputs, timings)``: ``(N, ...)`` outputs in row order and one timings dict per row.

        Raises:
            RuntimeError: If a request failed after its retries.
            TimeoutError: If not done in time.
        """
        handles = self.submit_many(batch)
        self.wait(handles, timeout)
        records = [self.ledger.records[h.request_id] for h in handles]
        failed = {r.request_id: r.error for r in records if r.error is not None}
        if failed:
            raise RuntimeError(f"{len(failed)} request(s) failed: {dict(list(failed.items())[:3])}")
        return torch.stack([r.output for r in records]), [r.timings() for r in records]

    def poll(self, seconds: float) -> None:
        """Run the coordinator for ``seconds`` (dispatch, collect, recover, adapt), then return."""
        self._pump(lambda: seconds == 0, seconds)

    def set_cpu_share(self, node: int, cpu_share: float) -> None:
        """Emulate a change of node ``node``'s CPU capacity (e.g. a slowdown by another tenant).

        The plan is not changed here: the coordinator notices through the node's monitored block
        latencies (or, for an idle node, its reported share).

        Raises:
            ValueError: If ``node`` or ``cpu_share`` is out of range.
        """
        if not 0 <= node < self.config.n_nodes:
            raise ValueError(f"node must be in [0, {self.config.n_nodes}), got {node}")
        if not 0.0 < cpu_share <= 1.0:
            raise ValueError(f"cpu_share must be in (0, 1], got {cpu_share!r}")
        self.pool.actors[node].set_cpu_share.remote(float(cpu_share))
        self._record({"kind": "cpu_share", "node": node, "from": self.policy.shares[node], "to": float(cpu_share)})
        self.policy.set_share(node, cpu_share)

    def use_partitioner(self, partitioner: str, repartition: bool = False) -> PartitionPlan:
        """Drain and re-deploy with another partitioner on the profiled numbers (for comparisons).

        Args:
            partitioner: ``"dp"``, ``"proportional"`` or ``"monolithic"``.
            repartition: Adapt to node changes from now on (ignored for monolithic).

        Returns:
            The new plan.

        Raises:
            ValueError: If the partitioner is unknown or the placement is not a pipeline.
        """
        if self.config.placement != "pipeline":
            raise ValueError("use_partitioner applies to placement='pipeline'")
        update = {"partitioner": partitioner, "repartition": repartition and partitioner != "monolithic"}
        self._set_config(ServingConfig.model_validate({**self.config.model_dump(), **update}))
        plan = make_plan(self.problem, self.config, cpu_shares=self.policy.shares)
        self._install(plan, {"kind": "partitioner", "partitioner": partitioner}, switched=False)
        return plan

    def use_scheduler(self, scheduler: str) -> None:
        """Drain and switch the request scheduler (``replicas`` placement) to a fresh ``scheduler``.

        Raises:
            ValueError: If the scheduler name is unknown.
        """
        self._drain()
        self._set_config(ServingConfig.model_validate({**self.config.model_dump(), "scheduler": scheduler}))
        cfg = self.config
        self.scheduler = create_scheduler(scheduler, seed=cfg.scheduler_seed, max_load=cfg.max_load,
                                          max_latency=cfg.max_latency_s)

    def set_repartition(self, enabled: bool) -> None:
        """Turn adaptive re-partitioning on or off."""
        self._set_config(self.config.model_copy(update={"repartition": bool(enabled)}))

    def _set_config(self, config: ServingConfig) -> None:
        self.config = self.policy.config = config

    # ------------------------------------------------------------------ statistics
    def stats(self, request_ids: Sequence[int] | None = None) -> dict[str, Any]:
        """Session figures over ``request_ids`` (default: every request); see
        :func:`~eclm.serving.session_stats.summarize`. Adds the plan and event counts."""
        out = summarize(self._records(request_ids), self.config.max_in_flight)
        out.update({"boundaries": list(self.plan.boundaries),
                    "predicted": plan_costs(self.plan, self.config.micro_batch_size),
                    "repartitions": sum(1 for e in self.events if e["kind"] == "repartition"),
                    "replacements": sum(1 for e in self.events if e["kind"] == "replace")})
        return out

    def timeline(self, window_s: float = 0.5, request_ids: Sequence[int] | None = None) -> dict[str, Any]:
        """Throughput per window since the session start and the events' times (seconds)."""
        finish = [r.finished_at for r in self._records(request_ids) if r.ok]
        times, rps = throughput_timeline(finish, self.started_at, window_s)
        marks = [(e["time_s"], e["kind"]) for e in self.events if e["kind"] in ("repartition", "cpu_share", "replace")]
        return {"time_s": times, "throughput_rps": rps, "events": marks}

    def _records(self, request_ids: Sequence[int] | None) -> list[RequestRecord]:
        if request_ids is None:
            return list(self.ledger.records.values())
        return [self.ledger.records[i] for i in request_ids]

    # ------------------------------------------------------------------ coordinator loop
    def _pump(self, until: Callable[[], bool], timeout: float | None) -> bool:
        """Dispatch, collect, recover and adapt until ``until()`` holds; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._admit()
            self._collect(0.0 if timeout == 0 else 0.05)
            self._check_hung()
            self._adapt()
            if until():
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            if not self._flight:
                # Queued work but nothing admitted: every replica is filtered out (AMP4EC's load
                # filter); wait for the measured loads to decay.
                time.sleep(0.005)

    def _admit(self) -> None:
        while self._admitting:
            n = self.ledger.next_size()
            if n == 0:
                return
            key, schedule_s, routes = None, 0.0, self._routes
            if self.config.placement == "replicas":
                t0 = time.perf_counter()
                key = self._choose_replica()
                schedule_s = time.perf_counter() - t0
                if key is None:
                    return
                routes = (StageRoute(key, 0, self.n_blocks, 0),)
            batch = self.ledger.take_batch(time.time(), key, schedule_s / n)
            self._dispatch(batch.batch_id, self.ledger.inputs(batch), routes, key, n)

    def _dispatch(self, batch_id: int, x: Tensor, routes: tuple[StageRoute, ...], key: Any, n: int) -> None:
        # One call per stage; each returns one StageMessage (activation + every stage's timings)
        # that Ray hands straight to the next stage's call.
        ref = encode(x, "float32", batch_id)
        for r in routes:
            ticket = {"batch_id": batch_id, "hops_out": r.hops_out, "codec": r.codec,
                      "monitor": n == self.config.micro_batch_size}
            actor = self.pool.actors[r.node]
            ref = (actor.relay if r.is_relay else actor.forward).remote(ref, ticket)
        self._flight[batch_id] = Flight(batch_id, ref, key)
        if key is not None:
            self.scheduler.on_start(key)

    def _collect(self, timeout: float) -> None:
        if not self._flight:
            return
        by_ref = {f.out_ref: bid for bid, f in self._flight.items()}
        ready, _ = ray.wait(list(by_ref), num_returns=1, timeout=timeout)
        if not ready:
            return
        ready, _ = ray.wait(list(by_ref), num_returns=len(by_ref), timeout=0)
        failures = []
        for ref in ready:
            flight = self._flight.pop(by_ref[ref])
            try:
                message = ray.get(flight.out_ref)
            except RayError as err:
                failures.append((flight, err))
                continue
            self._finish(flight, decode(message), message.timings)
        if failures:
            self._recover(failures)

    def _finish(self, flight: Flight, out: Tensor, timings: list[dict]) -> None:
        self.ledger.complete(flight.batch_id, out, timings, time.time())
        if flight.route_key is not None:
            self.scheduler.on_finish(flight.route_key, time.monotonic() - flight.dispatched)
        for t in timings:
            busy = t["compute_s"] + (0.0 if t.get("overlap") else t["link_s"])
            self._busy[t["node"]].append((time.monotonic(), busy))
            self.policy.observe(t)
            self.monitor_events.extend(t["events"])

    def _check_hung(self) -> None:
        limit = self.config.request_timeout_s
        now = time.monotonic()
        hung = [f for f in self._flight.values() if now - f.dispatched > limit]
        if hung:
            for f in hung:
                del self._flight[f.batch_id]
                ray.cancel(f.out_ref, force=False)
            self._recover([(f, TimeoutError(f"no result within {limit} s")) for f in hung])

    # ------------------------------------------------------------------ fault tolerance
    def _recover(self, failures: list[tuple[Flight, BaseException]]) -> None:
        """Replace dead stage actors, then put the failed micro-batches back in the queue."""
        for node in self.pool.unresponsive(sorted({r.node for r in self._routes} | set(self._replicas)),
                                           _PROBE_TIMEOUT_S):
            t0 = time.perf_counter()
            actor = self.pool.replace(node, self.policy.shares[node])
            start, stop = self._held(node)
            ray.get(actor.load.remote(self._architecture, self._payload_ref, start, stop))
            self.policy.replaced(node)
            self._record({"kind": "replace", "node": node, "blocks": [start, stop],
                          "seconds": time.perf_counter() - t0})
        now = time.time()
        for flight, err in failures:
            if flight.route_key is not None:
                self.scheduler.on_finish(flight.route_key, time.monotonic() - flight.dispatched)
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            _, failed = self.ledger.fail(flight.batch_id, reason[:300], now)
            if failed:
                log.warning("serving %s: %d request(s) failed for good: %s", self.name, len(failed), reason)

    def _held(self, node: int) -> tuple[int, int]:
        if self.config.placement == "replicas":
            return 0, self.n_blocks
        return self.plan.boundaries[node], self.plan.boundaries[node + 1]

    # ------------------------------------------------------------------ adaptation
    def _adapt(self) -> None:
        if self.config.placement != "pipeline" or not self.config.repartition or not self._admitting:
            return
        now = time.monotonic()
        self._poll_idle_nodes(now)
        checked = self.policy.decide(now)
        if checked is None:
            return
        decision, events = checked
        if decision.switch:
            self._install(decision.plan, {
                "kind": "repartition", "reason": decision.reason, "slowdown": self.policy.factors(),
                "cost_before": decision.current_cost, "cost_after": decision.best_cost,
                "trigger": [e["quantity"] for e in events][:10] or ["periodic check"],
            })

    def _poll_idle_nodes(self, now: float) -> None:
        """Ask idle nodes (no blocks, so no results to report through) for their status."""
        for node, ref in list(self._status_refs.items()):
            ready, _ = ray.wait([ref], timeout=0)
            if ready:
                del self._status_refs[node]
                try:
                    self.policy.observe_status(ray.get(ref))
                except RayError:
                    pass
        if self.policy.status_due(now):
            for node in self.policy.idle_nodes():
                if node not in self._status_refs:
                    self._status_refs[node] = self.pool.actors[node].status.remote()

    def _drain(self) -> float:
        t0 = time.perf_counter()
        self._admitting = False
        try:
            while self._flight:
                self._collect(0.05)
                self._check_hung()
        finally:
            self._admitting = True
        return time.perf_counter() - t0

    def _install(self, plan: PartitionPlan, event: dict[str, Any], switched: bool = True) -> None:
        """Drain the pipeline, give every node its new blocks, and switch to ``plan``."""
        old = self.plan
        drain_s = self._drain()
        t0 = time.perf_counter()
        changed = [i for i in range(self.config.n_nodes) if plan.blocks_of(i) != old.blocks_of(i)]
        ray.get([self.pool.actors[i].load.remote(self._architecture, self._payload_ref,
                                                 plan.boundaries[i], plan.boundaries[i + 1]) for i in changed])
        self.policy.installed(plan, time.monotonic(), switched)
        self.plan, self._routes = plan, routes_for(plan)
        self._record({**event, "from": list(old.boundaries), "to": list(plan.boundaries), "drain_s": drain_s,
                      "reload_s": time.perf_counter() - t0,
                      "predicted": plan_costs(plan, self.config.micro_batch_size)})

    # ------------------------------------------------------------------ replicas
    def _choose_replica(self) -> int | None:
        cfg = self.config
        now = time.monotonic()
        loads = [busy_fraction(self._busy[i], now, cfg.monitor_interval_s) for i in range(cfg.n_nodes)]
        states = replica_states(self._replicas, self.policy.shares, cfg.node_memory_bytes, loads,
                                self._need_bytes, cfg.link_latency_s)
        index = self.scheduler.choose(self.scheduler.with_bookkeeping(states))
        return None if index is None else self._replicas[index]

    # ------------------------------------------------------------------ logging & lifecycle
    def _record(self, event: dict[str, Any]) -> None:
        self.session.record(event)

    def _track(self, action: Callable[[Any], Any]) -> None:
        self.session.track(action)

    @property
    def events(self) -> list[dict[str, Any]]:
        """Deploy, re-partition, replacement and CPU-share events, in order (``time_s`` from start)."""
        return self.session.events

    @property
    def started_at(self) -> float:
        """Wall time (s) the session clock counts from (see :meth:`restart_clock`)."""
        return self.session.started_at

    def restart_clock(self) -> float:
        """Restart the session clock now, e.g. after a warm-up that should not count.

        :meth:`timeline` windows and the ``time_s`` of later events count from this moment;
        earlier events (the deployment itself, the warm-up) keep their place with negative times.
        Requests and their statistics are not touched.

        Returns:
            The new start (wall time, s), also :attr:`started_at`.
        """
        return self.session.restart()

    def log_session(self) -> dict[str, Any]:
        """Log the session's figures, events and throughput plot to the tracker; returns the stats."""
        stats = self.stats()
        self.session.log(stats, self.timeline(0.5))
        return stats

    def close(self, log_session: bool = True) -> None:
        """Finish in-flight requests, log the session, and stop the actors this deployment owns."""
        if self._closed:
            return
        try:
            self._drain()
            if log_session:
                self.log_session()
        finally:
            self._closed = True
            for ref in self._status_refs.values():
                ray.cancel(ref, force=False)
            if self._owns_pool:
                self.pool.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"deployment {self.name!r} is closed")

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def deploy(source: ModelSource, config: ServingConfig | dict | None = None, **kwargs: Any) -> Deployment:
    """Create a :class:`Deployment` (validating a dict config first); see its arguments."""
    cfg = config if isinstance(config, ServingConfig) else ServingConfig.model_validate(config or {})
    return Deployment(source, cfg, **kwargs)


__all__ = ["Deployment", "RequestHandle", "StagePool", "deploy"]
