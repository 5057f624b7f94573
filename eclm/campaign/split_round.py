"""A parallel split round, written once against the endpoint protocols.

The coordinator only sequences calls; the work is in the cloud's ``split_*`` methods
(:mod:`eclm.pipelines.split_service`) and the devices' (:mod:`eclm.pipelines.split_device`).
Over Ray, data never passes through the driver during training: a step's smashed-activation
results go straight into the cloud's server step (one gradient per device plus a record), whose
gradient results go straight into each device's next forward (or a backward). A whole epoch is
submitted at once and per-endpoint submission order keeps it synchronous; the coordinator waits
once per epoch. In-process (:mod:`eclm.campaign.local`) the same calls run one after another.
Any failure aborts the round for all split devices (the protocol is synchronous); the cloud model
is untouched because the server trains a private copy until the merge.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from eclm.campaign.endpoints import CallFailure, Fleet
from eclm.campaign.messages import DeviceMetrics, DeviceSummary, SubModelPackage, finite_or_none
from eclm.campaign.results import SplitRoundResult
from eclm.modules.spec import SubModelSpec
from eclm.pipelines.split_local import emulated_epoch_seconds
from eclm.split import ComputeModel, LinkModel

__all__ = ["run_split_round"]


class _RoundFailed(Exception):
    def __init__(self, failures: Mapping[str, CallFailure]) -> None:
        super().__init__("; ".join(f"{k}: {f}" for k, f in list(failures.items())[:3]))
        self.failures = dict(failures)


def _wait(fleet: Fleet, calls: Mapping[str, Any], timeout: float) -> dict[str, Any]:
    results, failures = fleet.gather(calls, timeout)
    if failures:
        raise _RoundFailed(failures)
    return results


def run_split_round(fleet: Fleet, summaries: Mapping[str, DeviceSummary], epochs: int, version: int,
                    timeout: float, reasons: Mapping[str, str] | None = None) -> SplitRoundResult:
    """Run ``epochs`` epochs of parallel split learning for the devices of ``summaries``.

    Args:
        fleet: The binding (cloud and device endpoints).
        summaries: Per split device its summary of this cycle (importance, resources, classes).
        epochs: Split epochs.
        version: The cloud version the round starts from (recorded in the packages).
        timeout: Seconds to wait for any batch of calls.
        reasons: Why each device trains split (for the report).

    Returns:
        The :class:`SplitRoundResult`; on failure only ``failures``/``lost``/``report`` are set.
    """
    result, start, names = SplitRoundResult(), time.perf_counter(), list(summaries)
    cloud, devs = fleet.cloud, fleet.devices
    try:
        hello = _wait(fleet, {n: devs[n].split_hello() for n in names}, timeout)
        plan_in = [{"name": n, "importance": [list(r) for r in summaries[n].importance], **hello[n]} for n in names]
        info = _wait(fleet, {"cloud": cloud.split_prepare(plan_in)}, timeout)["cloud"]
        result.failures.update({n: f"split: {why}" for n, why in info["excluded"].items()})
        order = sorted(info["devices"], key=lambda n: info["devices"][n]["index"])
        plan = info["devices"]
        _wait(fleet, {n: devs[n].split_begin(plan[n]["payload"], info["client_sizes"], plan[n]["index"])
                      for n in order}, timeout)
        evaluated = [n for n in order if hello[n]["test_samples"] > 0]
        before = _evaluate(fleet, evaluated, timeout)
        epoch_records = [_run_epoch(fleet, order, epoch, timeout) for epoch in range(epochs)]
        after = _evaluate(fleet, evaluated, timeout)
        uploads = _wait(fleet, {"cloud": cloud.split_finish()}, timeout)["cloud"]
        _wait(fleet, {n: devs[n].split_end() for n in order}, timeout)
    except _RoundFailed as failed:
        _abort(fleet, names, failed, result)
        return result
    real = time.perf_counter() - start
    _summarise(result, info, order, epoch_records, (before, after), uploads, (real, version), reasons or {})
    return result


def _evaluate(fleet: Fleet, names: list[str], timeout: float) -> dict[str, dict]:
    """Split inference on each device's test set: device part -> codec -> server part."""
    smashed = {n: fleet.devices[n].split_smash_test() for n in names}
    return _wait(fleet, {n: fleet.cloud.split_evaluate(smashed[n]) for n in names}, timeout)


def _run_epoch(fleet: Fleet, order: list[str], epoch: int, timeout: float) -> dict:
    """Submit one epoch (steps, backward passes, aggregation) and wait for it once."""
    cloud, devs = fleet.cloud, fleet.devices
    counts = _wait(fleet, {"plan": cloud.split_epoch_plan(epoch)}, timeout)["plan"]
    pending: dict[int, Any] = {}
    others: dict[str, Any] = {}
    for step, row in enumerate(counts):
        active = [k for k, count in enumerate(row) if count > 0]
        smashed = [devs[order[k]].split_forward(epoch, step, pending.pop(k, None)) for k in active]
        for k in list(pending):
            others[f"backward {order[k]} {step}"] = devs[order[k]].split_backward(pending.pop(k))
        outs = cloud.split_server_step.many(len(active) + 1, epoch, step, *smashed)
        pending.update(zip(active, outs[:-1], strict=True))
        others[f"server step {step}"] = outs[-1]
    for k, grad in pending.items():
        others[f"backward {order[k]} last"] = devs[order[k]].split_backward(grad)
    ends = {n: devs[n].split_epoch_end() for n in order}
    aggregated = cloud.split_aggregate.many(len(order) + 1, *ends.values())
    loads = {f"load {n}": devs[n].split_load(aggregated[k]) for k, n in enumerate(order)}
    done = _wait(fleet, {**{f"end {n}": r for n, r in ends.items()}, **loads, **others, "summary": aggregated[-1]},
                 timeout)
    return {"summary": done["summary"], "ends": {n: done[f"end {n}"] for n in order}, "steps": len(counts)}


def _abort(fleet: Fleet, names: list[str], failed: _RoundFailed, result: SplitRoundResult) -> None:
    fleet.gather({"abort": fleet.cloud.split_abort()}, 30.0)
    for key, failure in failed.failures.items():
        # Keys name the device they wait on ("end d0", "backward d0 3", "d0"); cloud keys name none.
        if failure.kind in ("dead", "timeout"):
            result.lost.update(n for n in names if n in key.split(" "))
    for name in names:
        result.failures.setdefault(name, f"split round aborted: {failed}")
    result.report = {"aborted": str(failed)}


def _traffic(order: list[str], epochs: list[dict], info: dict) -> tuple[dict[str, dict], float, list[dict]]:
    """Per device traffic and compute, the emulated round time and per-epoch reports."""
    devs = info["devices"]
    compute = {n: ComputeModel(slowdown=devs[n]["slowdown"]) for n in order}
    links = {n: LinkModel(bandwidth=devs[n]["bandwidth"], latency=devs[n]["latency"]) for n in order}
    # The plan divides one bandwidth pool; when only model weights move, all of it is theirs.
    pool = info["plan"]["total_bandwidth"]
    shared = LinkModel(pool, max(devs[n]["latency"] for n in order))
    emulated = shared.transfer_time(sum(len(devs[n]["payload"]) for n in order))  # device parts go out
    keys = ("bits_activations", "bytes_labels", "bytes_gradients", "bytes_states_up", "bytes_states_down",
            "device_seconds", "steps")
    traffic = {n: dict.fromkeys(keys, 0) for n in order}
    reports = []
    for e in epochs:
        records = {n: e["ends"][n]["records"] for n in order}
        sync = {n: (len(e["ends"][n]["state"]), e["summary"]["payload_bytes"][n]) for n in order}
        times = emulated_epoch_seconds(records, e["summary"]["records"], compute, links, sync, pool)
        emulated += times["total_s"]
        for n in order:
            t = traffic[n]
            t["bits_activations"] += sum(r["bits_up"] for r in records[n])
            t["bytes_labels"] += sum(r["label_bits"] for r in records[n]) // 8
            t["bytes_gradients"] += sum(r["bits_down"] for r in records[n]) // 8
            t["bytes_states_up"] += sync[n][0]
            t["bytes_states_down"] += sync[n][1]
            t["device_seconds"] += sum(r["forward_s"] + r["backward_s"] for r in records[n])
            t["steps"] += len(records[n])
        reports.append({"loss": e["summary"]["loss"], "accuracy": e["summary"]["accuracy"], "steps": e["steps"],
                        "emulated": times})
    return traffic, emulated, reports


def _summarise(result: SplitRoundResult, info: dict, order: list[str], epochs: list[dict],
               evaluation: tuple[dict, dict], uploads: dict, timing: tuple[float, int],
               reasons: Mapping[str, str]) -> None:
    """Traffic, emulated and real time, metrics and report from the round's records.

    A round whose training diverged (a loss or accuracy that is not a finite number) is reported,
    not raised: those values become ``None`` in the device metrics and are left out of the round
    metrics, and ``report["diverged"]`` names the devices whose evaluation after the round is not
    finite. Their uploads are checked like any other: the cloud's integrity check rejects non-finite
    or outsized weights (docs/security.md), so the cloud model stays as it was.
    """
    (before, after), (real_seconds, version) = evaluation, timing
    devs, spec = info["devices"], SubModelSpec.from_json(info["spec"])
    traffic, emulated, epoch_reports = _traffic(order, epochs, info)
    m: dict[str, float] = {"split/devices": len(order), "split/epochs": len(epochs), "split/real_seconds": real_seconds,
                           "split/emulated_seconds": emulated, "split/planned_round_seconds": info["plan"]["round_time"]}
    if info["plan"].get("epoch_time") is not None:  # the planner's own estimate of one epoch (delay model)
        m["split/planned_epoch_seconds"] = info["plan"]["epoch_time"]
    if epoch_reports:
        m["split/train_loss"] = epoch_reports[-1]["loss"]
        m["split/train_accuracy"] = epoch_reports[-1]["accuracy"]
    diverged = sorted(n for n in after if any(finite_or_none(after[n].get(k)) is None for k in ("loss", "accuracy")))
    for n in order:
        t = traffic[n]
        # Evaluation sends the test activations (codec size) and int64 labels.
        t["bytes_eval"] = sum(math.ceil(r[n]["bits"] / 8) + 8 * r[n]["samples"] for r in (before, after) if n in r)
        result.bytes_up[n] = (math.ceil(t["bits_activations"] / 8) + t["bytes_labels"] + t["bytes_states_up"]
                              + t["bytes_eval"])
        result.bytes_down[n] = t["bytes_gradients"] + t["bytes_states_down"]
        result.packages[n] = SubModelPackage(device=n, spec=spec, payload=devs[n]["payload"], version=version,
                                             cost=info["cost"])
        m |= {f"split/{n}/{k}": v for k, v in t.items()}
        m |= {f"split/{n}/cut": devs[n]["cut"], f"split/{n}/bandwidth_mbps": devs[n]["bandwidth"] * 8 / 1e6,
              f"split/{n}/device_seconds_emulated": t["device_seconds"] * devs[n]["slowdown"]}
        b, a = before.get(n, {}), after.get(n, {})
        result.metrics[n] = DeviceMetrics(
            mode="split", cut=devs[n]["cut"], acc_before=finite_or_none(b.get("accuracy")),
            acc_after=finite_or_none(a.get("accuracy")), loss_before=finite_or_none(b.get("loss")),
            loss_after=finite_or_none(a.get("loss")), train_seconds=real_seconds,
            emulated_seconds=emulated, batches=t["steps"], seconds_per_batch=t["device_seconds"] / max(1, t["steps"]),
            params=info["cost"]["params"], flops=info["cost"]["flops"], train_memory_estimate=devs[n]["memory"])
        result.uploads[n] = uploads[n].model_copy(update={"metrics": result.metrics[n]})
    result.round_metrics = ({k: v for k, v in m.items() if finite_or_none(v) is not None}
                            | {"split/diverged_devices": len(diverged)})
    result.report = {"reasons": dict(reasons), "diverged": diverged, "spec": info["spec"], "stages": info["stages"],
                     "plan": info["plan"],
                     "costs": info["costs"], "client_sizes": info["client_sizes"], "excluded": info["excluded"],
                     "traffic": traffic, "epochs": epoch_reports, "real_seconds": real_seconds,
                     "emulated_seconds": emulated,
                     "devices": {n: {k: v for k, v in devs[n].items() if k != "payload"} for n in order}}
