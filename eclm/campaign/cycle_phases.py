"""The phases of one cycle, in order: summaries, routing, delivery, install, adapt, merge.

Each phase is a small function over the :class:`~eclm.campaign.coordinator.CycleCoordinator`
(its fleet, strategy, state) and the cycle's :class:`~eclm.campaign.results.CycleResult`, which
collects failures per device as they happen. A device that fails a phase takes no part in the
later ones; the cycle goes on with the others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from eclm.campaign.messages import (
    CloudSnapshot,
    DeviceSummary,
    DeviceUpdate,
    HeldModel,
    MergeOutcome,
    SubModelPackage,
)
from eclm.campaign.results import CycleResult, SplitRoundResult
from eclm.campaign.split_round import run_split_round

if TYPE_CHECKING:
    from eclm.campaign.coordinator import CycleCoordinator

log = logging.getLogger(__name__)


def run_phases(c: CycleCoordinator, result: CycleResult) -> dict[str, DeviceSummary]:
    """Run the cycle's phases, filling ``result``; returns the summaries the devices sent.

    Raises:
        CloudUnavailable: If the cloud fails even after being recreated.
    """
    task, step = f"cycle {result.round}", c.progress.advance
    t0 = time.perf_counter()
    summaries = _summaries(c, result)
    step(task, f"{len(summaries)} summaries")
    split_devices = _split_devices(c, summaries)
    local = {n: s for n, s in summaries.items() if n not in split_devices}
    packages = _deliver(c, local, result)
    step(task, f"{len(packages)} sub-models derived")
    t1 = time.perf_counter()
    adapting = _install(c, local, packages, result)
    step(task, "installed")
    t2 = time.perf_counter()
    updates, split = _adapt(c, adapting, {n: summaries[n] for n in split_devices}, split_devices, result)
    step(task, f"{len(updates)} adapted")
    if split is not None:
        packages |= split.packages
    t3 = time.perf_counter()
    _traffic(c, result, packages, updates, split)
    _merge(c, result, updates, packages)
    step(task, f"merge {result.merge.decision}")
    result.durations |= {"derive": t1 - t0, "ship": t2 - t1, "adapt": t3 - t2, "merge": time.perf_counter() - t3}
    return summaries


def _summaries(c: CycleCoordinator, result: CycleResult) -> dict[str, DeviceSummary]:
    """Every device's summary (computed with the cloud's selector); first-time devices enroll.

    The selector travels only to devices that do not hold it yet (it never changes after the
    offline stage); a device whose reply shows another selector (e.g. restarted on a fresh node)
    is asked again with it.
    """
    size, handle, digest = c.selector()
    held = c.state.selectors
    replies = c._devices({n: c.fleet.devices[n].summary(None if held.get(n) == digest else handle)
                          for n in result.devices}, result.failures, "summary")
    stale = [n for n, r in replies.items() if r.selector_digest != digest]
    replies |= c._devices({n: c.fleet.devices[n].summary(handle) for n in stale}, result.failures, "summary")
    sent = {n for n in result.devices if held.get(n) != digest} | set(stale)
    result.bytes_down |= {n: size for n in sent}
    c.state = c.state.model_copy(update={"selectors": held | {n: digest for n in replies}})
    summaries = c._attributed(replies, result.failures, "summary")
    enrolled = dict(c.state.enrolled)
    for name, s in list(summaries.items()):
        enrolled.setdefault(name, s.classes)
        foreign = sorted(set(s.classes) - set(enrolled[name]))
        if foreign:
            result.failures[name] = f"summary: claims classes {foreign} it did not enroll with"
            del summaries[name]
    c.state = c.state.model_copy(update={"enrolled": enrolled})
    return summaries


def _split_devices(c: CycleCoordinator, summaries: Mapping[str, DeviceSummary]) -> dict[str, str]:
    """Devices of this cycle that train split, with the reason (``auto``: when local training
    does not fit, as the cloud judges it; a failed check stays local)."""
    modes = {d.name: d.mode for d in c.cfg.devices}
    chosen = {n: "mode: split" for n in summaries if modes.get(n) == "split"}
    auto = {n: (lambda cl, s=summaries[n]: cl.split_route(s)) for n in summaries if modes.get(n) == "auto"}
    routed, _ = c._cloud_calls(auto, "split routing")
    return chosen | {n: f"auto: {why}" for n, why in routed.items() if why is not None}


def _deliver(c: CycleCoordinator, summaries: Mapping[str, DeviceSummary], result: CycleResult
             ) -> dict[str, SubModelPackage]:
    calls = {n: (lambda cl, s=s: c.strategy.deliver(cl, s)) for n, s in summaries.items()}
    packages, failed = c._cloud_calls(calls, "delivery")
    result.failures |= {n: f"derive: {f}" for n, f in failed.items()}
    return packages


def _install(c: CycleCoordinator, summaries: Mapping[str, DeviceSummary], packages: dict[str, SubModelPackage],
             result: CycleResult) -> dict[str, SubModelPackage]:
    """Install the packages; returns, per device that goes on to adapt, the package it holds now.

    A device the strategy delivered nothing to keeps what it holds (its held spec stands in).
    """
    costs = c.costs_handle()
    installs = c._devices({n: c.fleet.devices[n].install(p, costs) for n, p in packages.items()}, result.failures,
                          "install")
    held = dict(c.state.held)
    holding = {}
    for name, summary in summaries.items():
        if name in installs:
            pkg = packages[name]
            held[name] = HeldModel(spec=pkg.spec, version=pkg.version, lagging=pkg.lagging)
            holding[name] = pkg
        elif name not in packages and name not in result.failures and summary.held is not None:
            holding[name] = SubModelPackage(device=name, spec=summary.held.spec, version=summary.held.version,
                                            lagging=summary.held.lagging)
    c.state = c.state.model_copy(update={"held": held,
                                         "issued": c.state.issued | {n: p.spec for n, p in holding.items()}})
    return holding


def _adapt(c: CycleCoordinator, holding: Mapping[str, SubModelPackage], split_summaries: Mapping[str, DeviceSummary],
           reasons: Mapping[str, str], result: CycleResult) -> tuple[dict[str, DeviceUpdate], SplitRoundResult | None]:
    """Local adaptation on the devices holding a sub-model while split devices run their round."""
    devices = c.fleet.devices
    if not c.strategy.adapts:
        measured = c._devices({n: devices[n].evaluate() for n in holding}, result.failures, "evaluate")
        result.device_metrics |= {n: m.model_copy(update={"drift": c.drift.get(n)}) for n, m in measured.items()}
        result.specs |= {n: holding[n].spec for n in measured}
        return {}, None
    refs = {n: devices[n].adapt() for n in holding}
    split = None
    if split_summaries:  # runs while the local devices adapt
        split = run_split_round(c.fleet, split_summaries, c.cfg.split.epochs, c.state.version, c.timeout, reasons)
    arrived = _on_arrival(c, holding) if c.strategy.merges and c.cfg.merge.screen_on_arrival else None
    updates = c._attributed(c._devices(refs, result.failures, "adapt", arrived), result.failures, "adapt")
    specs = {n: holding[n].spec for n in updates}
    if split is not None:
        updates |= split.uploads
        specs |= {n: p.spec for n, p in split.packages.items()}
        result.failures |= split.failures
        c._pending_restart |= split.lost
        result.split = split
    result.device_metrics |= {n: u.metrics.model_copy(update={"drift": c.drift.get(n)}) for n, u in updates.items()}
    result.specs |= specs
    return updates, split


def _on_arrival(c: CycleCoordinator, holding: Mapping[str, SubModelPackage]) -> Callable[[str, DeviceUpdate], None]:
    """Hands uploads to the strategy as they arrive (eclm: the cloud screens them while the other
    devices still adapt), at most one call in flight: uploads that arrive meanwhile wait and go
    together in the next call, so the cloud never builds a backlog the merge would wait behind
    (what is still waiting when the last device answers is screened by the merge itself, on all
    its workers). Fire and forget: nothing is waited for, and a failure here (the cloud busy,
    dead or refusing) only leaves the merge to do that work itself."""
    waiting: list = []
    inflight = None

    def arrived(name: str, update: DeviceUpdate) -> None:
        nonlocal inflight
        if getattr(update, "device", None) != name:
            return  # the cycle fails this reply; the merge never sees it
        try:
            waiting.append(c.attribute(name, update, holding[name]))
            if inflight is not None and not c.fleet.done(inflight):
                return
            batch = list(waiting)
            waiting.clear()
            inflight = None  # a call that fails to start leaves none in flight
            inflight = c.strategy.arrived(c.fleet.cloud, batch)
        except Exception as err:  # noqa: BLE001 - an optimisation must not fail the cycle
            log.debug("handing uploads on arrival failed at %s: %r", name, err)

    return arrived


def _traffic(c: CycleCoordinator, result: CycleResult, packages: Mapping[str, SubModelPackage],
             updates: Mapping[str, DeviceUpdate], split: SplitRoundResult | None) -> None:
    for n in result.devices:  # the selector's bytes were counted when it was sent
        result.bytes_down[n] = result.bytes_down.get(n, 0) + (packages[n].nbytes if n in packages else 0)
        if n in packages and packages[n].delivery is not None:
            result.deliveries[n] = packages[n].delivery
        result.bytes_up[n] = len(updates[n].payload) if n in updates and c.strategy.merges else 0
    if split is not None:  # split devices sent activations and device parts, not a sub-model
        result.bytes_up |= split.bytes_up
        result.bytes_down |= {n: result.bytes_down.get(n, 0) + b for n, b in split.bytes_down.items()}


def _merge(c: CycleCoordinator, result: CycleResult, updates: Mapping[str, DeviceUpdate],
           packages: Mapping[str, SubModelPackage]) -> None:
    """The strategy's server step, made durable; then the cloud's validation accuracy."""
    if not c.strategy.merges:
        result.merge = MergeOutcome.nothing(f"{c.strategy.name} does not merge", c.state.version)
    elif not updates:
        result.merge = MergeOutcome.nothing("no device returned an update", c.state.version)
    else:
        issued = {n: packages.get(n) or SubModelPackage(device=n, spec=result.specs[n], version=c.state.version)
                  for n in updates}
        attributed = [c.attribute(n, u, issued[n]) for n, u in updates.items()]
        result.merge, snapshot = _merge_durably(c, attributed)
        if snapshot is not None:
            result.cloud_val_acc = c._cloud(lambda cl: cl.validation_accuracy(), "validation")
            c._commit_version(snapshot, result.cloud_val_acc)
            return
    result.cloud_val_acc = c._cloud(lambda cl: cl.validation_accuracy(), "validation")


def _merge_durably(c: CycleCoordinator, attributed: list) -> tuple[MergeOutcome, CloudSnapshot | None]:
    """Merge, and on a new version take its snapshot; if the cloud died in between (the snapshot
    comes back at an older version), the merge is redone once on the recreated cloud."""
    outcome = None
    for _ in (0, 1):
        outcome = c._cloud(lambda cl: c.strategy.merge(cl, attributed), "merge")
        if not outcome.changed:
            return outcome, None
        snapshot = c._cloud(lambda cl: cl.snapshot(), "snapshot")
        if snapshot.version == outcome.version:
            return outcome, snapshot
    return MergeOutcome.nothing("the merged version was lost twice with the cloud endpoint", c.state.version), None


__all__ = ["run_phases"]
