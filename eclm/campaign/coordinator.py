"""The campaign cycle, written once, Ray-free: observe -> decide -> deliver -> adapt -> merge -> record.

:class:`CycleCoordinator` talks only to a :class:`~eclm.campaign.endpoints.Fleet` (the cloud and
device endpoints, with submit / gather-with-failures), a :class:`~eclm.campaign.strategy.ServerStrategy`
(what the server side does), a recorder and a store. ``eclm.Platform`` binds it to Ray actors;
unit tests and benchmarks bind it to in-process services. What it guarantees:

* one device cannot end or veto a cycle: a device whose call fails, whose reply claims another
  identity, or whose upload is malformed drops out of this cycle alone, with its reason;
* identity comes from the channel: every reply is attributed to the endpoint that answered;
* a dead device endpoint is restarted before its next call and resumes from its own store;
* a dead cloud endpoint is recreated from the last commit and the failed call is retried once;
  if that fails too the cycle is recorded as failed and the campaign goes on;
* after every step and cycle the campaign state is committed to the store, so a new process
  resumes from the last commit (:meth:`CycleCoordinator.resume_state`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from eclm.campaign.cycle_phases import run_phases
from eclm.campaign.endpoints import CallFailure, CloudEndpoint, Fleet, Pending
from eclm.campaign.messages import (
    AttributedUpdate,
    CloudInfo,
    CloudSnapshot,
    DeviceSummary,
    DeviceUpdate,
    EpochRecord,
    MergeOutcome,
    Resources,
    SubModelPackage,
)
from eclm.campaign.progress import NullProgress, Progress
from eclm.campaign.recorder import CycleRecorder, NullRecorder
from eclm.campaign.results import CycleResult
from eclm.campaign.store import CampaignState, CorruptStoreError, MemoryStore, RoundRecord
from eclm.campaign.strategy import ModularStrategy, ServerStrategy
from eclm.config import PlatformConfig
from eclm.pipelines.triggers import Decision, Observation, PeriodicTrigger, Trigger, trigger_from_config


class CloudUnavailable(RuntimeError):
    """The cloud endpoint failed a call and could not be brought back for it."""

    def __init__(self, what: str, failure: CallFailure) -> None:
        super().__init__(f"cloud {what} failed: {failure}")
        self.failure = failure


class CycleCoordinator:
    """Runs a campaign's cycles against a fleet (see the module docstring).

    Args:
        fleet: The cloud and device endpoints.
        config: The platform config.
        strategy: Server side of the cycle (default: eclm's :class:`ModularStrategy`).
        recorder: Where records go (default: nowhere).
        store: Durable campaign state (default: in memory).
        trigger: When cycles run (default: ``config.trigger`` or every step).
        state: A committed state to continue from (a resumed campaign), or ``None``.
        progress: Where progress goes (default: nowhere).
    """

    def __init__(self, fleet: Fleet, config: PlatformConfig, *, strategy: ServerStrategy | None = None,
                 recorder: CycleRecorder | None = None, store=None, trigger: Trigger | None = None,
                 state: CampaignState | None = None, progress: Progress | None = None) -> None:
        self.fleet, self.cfg = fleet, config
        self.strategy = strategy or ModularStrategy()
        self.recorder = recorder or NullRecorder()
        self.progress = progress or NullProgress()
        self.store = store if store is not None else MemoryStore()
        self.trigger = trigger or (trigger_from_config(config.trigger) if config.trigger else PeriodicTrigger(every_steps=1))
        self.state = state or CampaignState(run_id=self.store.run_id)
        if state is not None and state.trigger:
            self.trigger.load_state_dict(state.trigger)
        self.names = [d.name for d in config.devices]
        self.timeout = config.ray.call_timeout_s
        self.history: list[CycleResult] = []
        self.info: CloudInfo | None = None
        self._clock_origin = time.monotonic() - self.state.elapsed_s
        self._pending_restart: set[str] = set()
        self._manual: list[str] = []
        self._drift: dict[str, float] = {}
        self._selector: tuple[int, Any, str] | None = None
        self._costs: Any = None

    # ------------------------------------------------------------------ cloud calls
    def _cloud_calls(self, calls: Mapping[str, Callable[[CloudEndpoint], Pending[Any]]], what: str
                     ) -> tuple[dict[str, Any], dict[str, CallFailure]]:
        """Submit cloud calls and gather them; a dead cloud is recreated once and the unfinished
        calls resubmitted. Calls that raise are failures of their key (e.g. a device's derive); a
        ``make`` that submits nothing (returns ``None``) has no result."""
        results: dict[str, Any] = {}
        failures: dict[str, CallFailure] = {}
        todo = dict(calls)
        for attempt in (0, 1):
            submitted = {k: make(self.fleet.cloud) for k, make in todo.items()}
            got, failed = self.fleet.gather({k: p for k, p in submitted.items() if p is not None}, self.timeout)
            results |= got
            dead = {k: f for k, f in failed.items() if f.kind != "error"}
            failures |= {k: f for k, f in failed.items() if f.kind == "error"}
            if not dead:
                return results, failures
            if attempt == 1:
                raise CloudUnavailable(what, next(iter(dead.values())))
            self._recover_cloud(next(iter(dead.values())), what)
            todo = {k: todo[k] for k in dead}
        return results, failures

    def _cloud(self, make: Callable[[CloudEndpoint], Pending[Any]], what: str) -> Any:
        """One cloud call that must succeed (recovering a dead cloud once)."""
        results, failures = self._cloud_calls({"cloud": make}, what)
        if failures:
            raise CloudUnavailable(what, failures["cloud"])
        return results["cloud"]

    def _recover_cloud(self, failure: CallFailure, what: str) -> None:
        """Recreate the cloud endpoint from the last commit (no accepted round is lost).

        Raises:
            CloudUnavailable: With the original failure, if nothing was committed yet to restore
                from (e.g. the cloud's constructor failed at start-up).
        """
        try:
            _, snapshot = self.store.load_latest()
        except CorruptStoreError:
            raise CloudUnavailable(what, failure) from None
        self.fleet.recreate_cloud(snapshot)
        self._selector = self._costs = None
        self.recorder.record_event("cloud_recreated", self.state.round,
                                   {"cause": str(failure), "restored_version": snapshot.version})

    # ------------------------------------------------------------------ device calls
    def _devices(self, calls: Mapping[str, Pending[Any]], failures: dict[str, str], what: str,
                 each: Callable[[str, Any], None] | None = None) -> dict[str, Any]:
        """Gather device calls; a failed device is recorded (and restarted later if it died).
        ``each(name, reply)``: called for every reply as it arrives (see ``Fleet.gather``)."""
        results, failed = self.fleet.gather(calls, self.timeout, each)
        for name, f in failed.items():
            failures[name] = f"{what}: {f}"
            if f.kind in ("dead", "timeout"):
                self._pending_restart.add(name)
        return results

    def _restart_failed(self) -> list[str]:
        """Replace device endpoints that died; they resume from their stores."""
        if not self._pending_restart:
            return []
        restarted = sorted(self._pending_restart)
        self.fleet.restart_devices(restarted)
        self._pending_restart.clear()
        self.recorder.record_event("restarted", self.state.round, {"devices": restarted})
        return restarted

    def _attributed(self, replies: Mapping[str, Any], failures: dict[str, str], what: str) -> dict[str, Any]:
        """Replies whose ``device`` is the endpoint that answered; the others fail that device."""
        ok = {}
        for name, reply in replies.items():
            if reply.device != name:
                failures[name] = f"{what}: reply names device {reply.device!r}, not the endpoint {name!r}"
            else:
                ok[name] = reply
        return ok

    # ------------------------------------------------------------------ lifecycle
    def connect(self) -> CloudInfo:
        """Ask the cloud for its architecture facts (needed before anything else)."""
        self.info = self._cloud(lambda c: c.info(), "info")
        return self.info

    def pretrain(self) -> list[EpochRecord]:
        """The offline stage on the cloud, epoch by epoch (with progress); commits version 0."""
        start = time.perf_counter()
        total = self._cloud(lambda c: c.pretrain_begin(), "pretrain")
        self.progress.begin("offline stage", total)
        history = []
        for _ in range(total):
            history.append(self._cloud(lambda c: c.pretrain_epoch(), "pretrain"))
            self.progress.advance("offline stage", f"{history[-1].stage}: proxy val {history[-1].val_acc_dense:.1%}")
        self.progress.end("offline stage")
        val_acc = self._cloud(lambda c: c.validation_accuracy(), "validation")
        snapshot = self._cloud(lambda c: c.snapshot(), "snapshot")
        self.recorder.record_pretrain(history, val_acc, time.perf_counter() - start)
        self._commit_version(snapshot, val_acc)
        self.commit()
        return history

    def commit(self) -> CampaignState:
        """Write the campaign state to the store (after every step and cycle)."""
        self.state = self.store.save_commit(self.state.model_copy(update={
            "elapsed_s": self.elapsed(), "trigger": self.trigger.state_dict()}))
        return self.state

    def _commit_version(self, snapshot: CloudSnapshot, val_acc: float | None) -> None:
        """Make a new cloud version durable, then record (register) it."""
        self.store.save_cloud(snapshot)
        kept = sorted({*self.state.kept_versions, snapshot.version})[-self.cfg.merge.keep_versions:]
        self.state = self.state.model_copy(update={"version": snapshot.version, "kept_versions": kept,
                                                   "best_val_acc": snapshot.best_val_acc})
        self.recorder.record_version(snapshot.version, snapshot, self.info, val_acc, self.state.round)

    def elapsed(self) -> float:
        return time.monotonic() - self._clock_origin

    # ------------------------------------------------------------------ observing
    def observe(self) -> Observation:
        """Advance every device's data one step; measure drift and resources; swap on drops."""
        self._restart_failed()
        self.state = self.state.model_copy(update={"step": self.state.step + 1})
        failures: dict[str, str] = {}
        steps = self.cfg.steps_per_cycle
        positions = self._attributed(self._devices({n: d.advance(steps) for n, d in self.fleet.devices.items()},
                                                   failures, "advance"), failures, "advance")
        drift = self._attributed(self._devices({n: self.fleet.devices[n].drift() for n in positions}, failures,
                                               "drift"), failures, "drift")
        resources = self._devices({n: self.fleet.devices[n].profile() for n in positions}, failures, "profile")
        self._swap_on_resource_drop(resources)
        self._drift = {n: d.combined for n, d in drift.items()}
        manual, self._manual = tuple(self._manual), []
        self.state = self.state.model_copy(update={
            "positions": self.state.positions | {n: p.step for n, p in positions.items()},
            "resources": self.state.resources | resources})
        if failures:
            self.recorder.record_event("observe_failures", self.state.round, failures)
        return Observation(step=self.state.step, time=self.elapsed(), drift_scores=self._drift,
                           resources={n: r.as_dict() for n, r in resources.items()},
                           devices=tuple(self.names), manual_requests=manual)

    def _swap_on_resource_drop(self, resources: Mapping[str, Resources]) -> None:
        """Local swap for every device whose memory, compute or bandwidth fell since the last step."""
        for name, now in resources.items():
            before = self.state.resources.get(name)
            dropped = now.dropped_since(before) if before is not None else []
            if dropped:
                failures: dict[str, str] = {}
                out = self._devices({name: self.fleet.devices[name].shrink(None)}, failures, "shrink").get(name)
                self._record_swap(name, dropped, now, out, failures.get(name))

    def _record_swap(self, name: str, dropped: list[str], now: Resources, out, error: str | None) -> None:
        if error is None and (out is None or out.params_after == out.params_before):
            return  # holds no sub-model yet, or it still fits: nothing swapped
        record = {"device": name, "dropped": dropped, "resources": now.as_dict(), "step": self.state.step,
                  **({"error": error} if error else out.model_dump(mode="json"))}
        self.recorder.record_event("swap", self.state.round, record)
        if out is not None:
            held = self.state.held.get(name)
            if held is not None:
                self.state = self.state.model_copy(update={
                    "held": self.state.held | {name: held.model_copy(update={"spec": out.spec})}})

    def device_call(self, name: str, make: Callable[[Any], Pending[Any]], what: str) -> Any:
        """One call to one device that must succeed (operator actions: resources, swaps).

        Raises:
            ValueError: If the device is unknown, or the call failed (the message has the cause).
        """
        if name not in self.fleet.devices:
            raise ValueError(f"unknown device {name!r}; known: {self.names}")
        failures: dict[str, str] = {}
        results = self._devices({name: make(self.fleet.devices[name])}, failures, what)
        if failures:
            raise ValueError(f"device {name}: {failures[name]}")
        return results[name]

    def shrink(self, name: str, changes: Resources | None) -> Any:
        """A local swap on one device now (its resources dropped to ``changes``); recorded."""
        out = self.device_call(name, lambda d: d.shrink(changes), "shrink")
        now = self.device_call(name, lambda d: d.profile(), "profile")
        self.state = self.state.model_copy(update={"resources": self.state.resources | {name: now}})
        self._record_swap(name, ["manual"], now, out, None)
        self.commit()
        return out

    def request_cycle(self, devices: Sequence[str] | None = None) -> None:
        """Ask for a manual cycle at the next step (picked up by a ``ManualTrigger``)."""
        self._manual.extend(devices or self.names)

    def step(self) -> CycleResult | None:
        """One step: observe, let the trigger decide, run the cycle it asks for, commit."""
        obs = self.observe()
        decision: Decision = self.trigger.decide(obs)
        result = None
        if decision.kind == "adapt":
            result = self._cycle(list(decision.devices) or None, decision.reason)
        else:
            self.recorder.record_idle(self.state.round, obs.drift_scores)
        self.commit()
        return result

    def run(self, steps: int) -> list[CycleResult]:
        """Take ``steps`` steps; returns the cycles that ran."""
        return [r for r in (self.step() for _ in range(steps)) if r is not None]

    def run_cycle(self, devices: Sequence[str] | None = None, reason: str = "manual") -> CycleResult:
        """One cycle now (outside the trigger), then commit.

        Raises:
            ValueError: If a device name is unknown.
        """
        result = self._cycle(devices, reason)
        self.commit()
        return result

    # ------------------------------------------------------------------ the cycle
    def _cycle(self, devices: Sequence[str] | None, reason: str) -> CycleResult:
        unknown = sorted(set(devices or []) - set(self.names))
        if unknown:
            raise ValueError(f"unknown devices {unknown}; known: {self.names}")
        self._restart_failed()
        self.state = self.state.model_copy(update={"round": self.state.round + 1})
        result = CycleResult(round=self.state.round, step=self.state.step, devices=list(devices or self.names),
                             reason=reason)
        summaries: dict[str, DeviceSummary] = {}
        self.progress.begin(f"cycle {result.round}", 5)
        try:
            summaries = run_phases(self, result)
        except CloudUnavailable as err:
            result.failures["cloud"] = str(err)
            result.merge = MergeOutcome.nothing(f"cycle failed: {err}", self.state.version)
        finally:
            self.progress.end(f"cycle {result.round}")
        self._finish_cycle(result, summaries)
        return result

    def _finish_cycle(self, result: CycleResult, summaries: Mapping[str, DeviceSummary]) -> None:
        record = RoundRecord(round=result.round, cloud_val_acc=result.cloud_val_acc, decision=result.merge.decision,
                             acc_before={n: m.acc_before for n, m in result.device_metrics.items()},
                             acc_after={n: m.acc_after for n, m in result.device_metrics.items()
                                        if m.acc_after is not None})
        self.state = self.state.model_copy(update={"history": [*self.state.history, record]})
        self.history.append(result)
        if self.info is not None:
            self.recorder.record_cycle(result, summaries, self.info, self.state.history)

    # helpers the phases use --------------------------------------------
    def selector(self) -> tuple[int, Any, str]:
        """``(bytes, shareable handle, sha256)`` of the cloud's selector (fetched once per cloud endpoint)."""
        if self._selector is None:
            payload = self._cloud(lambda c: c.selector_payload(), "selector")
            self._selector = (len(payload), self.fleet.share(payload), hashlib.sha256(payload).hexdigest())
        return self._selector

    def costs_handle(self) -> Any:
        """The cost table devices need with their first package, shared once per cloud endpoint."""
        if self._costs is None:
            self._costs = self.fleet.share((self.info or self.connect()).costs)
        return self._costs

    def attribute(self, name: str, update: DeviceUpdate, issued: SubModelPackage) -> AttributedUpdate:
        enrolled = self.state.enrolled.get(name, update.classes)
        return AttributedUpdate(channel=name, issued=issued.spec, enrolled_classes=enrolled, update=update)

    @property
    def drift(self) -> dict[str, float]:
        return dict(self._drift)


__all__ = ["CloudUnavailable", "CycleCoordinator"]
