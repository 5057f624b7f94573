"""Driver-side coordinator of a parallel split round across Ray actors.

The driver only sequences calls; the work is in ``CloudService.split_*`` / ``EdgeService.split_*``
(logic in :mod:`eclm.pipelines.split_cloud` / :mod:`eclm.pipelines.split_edge`), and the call
sequence is the one :func:`eclm.pipelines.split_local.run_local_epochs` runs in-process.

Data never passes through the driver during training: a step's smashed-activation refs go
straight into the cloud's ``split_server_step`` (``num_returns`` = one gradient per device + a
record), whose gradient refs go straight into each device's next ``split_forward`` (or a
``split_backward``). A whole epoch is submitted at once and Ray's dependency tracking and per-actor
submission order keep it synchronous; the driver waits once per epoch. Any failure aborts the
round for all split devices (the protocol is synchronous); the cloud model is untouched because
the server trains a private copy until the merge.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from eclm.config import PlatformConfig
from eclm.pipelines.split_local import emulated_epoch_seconds
from eclm.runtime.ray_runtime import ActorFailure, gather
from eclm.split import ComputeModel, LinkModel

__all__ = ["SplitRoundResult", "choose_split_devices", "run_split_round"]


@dataclass
class SplitRoundResult:
    """What a split round gives the platform cycle.

    Attributes:
        packages: Per device ``{"spec", "payload"}``: the device part it downloaded.
        uploads: Per device an ``adapt``-shaped dict (payload = the aggregated sub-model, metrics)
            for the validated merge.
        bytes_up: Per device bytes sent (activations at the codec's exact size, labels, device-part
            states, evaluation activations).
        bytes_down: Per device bytes received besides the first device part (gradients, states).
        metrics: Flat ``split/...`` metrics for MLflow.
        report: JSON report (plan, stages, per-epoch loss and times).
        failures: Per device why it did not finish.
        lost: Devices whose actor died or timed out (to be restarted).
    """

    packages: dict[str, dict] = field(default_factory=dict)
    uploads: dict[str, dict] = field(default_factory=dict)
    bytes_up: dict[str, int] = field(default_factory=dict)
    bytes_down: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    lost: set[str] = field(default_factory=set)


class _RoundFailed(Exception):
    def __init__(self, failures: dict[str, ActorFailure]) -> None:
        super().__init__("; ".join(f"{k}: {f.kind}: {f.message}" for k, f in list(failures.items())[:3]))
        self.failures = failures


def _wait(refs: dict[str, Any], timeout: float) -> dict[str, Any]:
    results, failures = gather(refs, timeout)
    if failures:
        raise _RoundFailed(failures)
    return results


def choose_split_devices(cloud, config: PlatformConfig, summaries: Mapping[str, dict],
                         timeout: float) -> dict[str, str]:
    """Devices of this cycle that train split, with the reason.

    ``mode: split`` always does; ``mode: auto`` does when the cloud finds that local training
    does not fit the device's memory (``CloudService.split_route``); a failed check stays local.
    """
    modes = {d.name: d.mode for d in config.devices}
    chosen = {n: "mode: split" for n in summaries if modes.get(n) == "split"}
    auto = [n for n in summaries if modes.get(n) == "auto"]
    refs = {n: cloud.split_route.remote(n, summaries[n]["importance"], summaries[n]["resources"])
            for n in auto}
    for name, route in gather(refs, timeout)[0].items():
        if route["mode"] == "split":
            chosen[name] = f"auto: {route['reason']}"
    return chosen


def run_split_round(cloud, edges: Mapping[str, Any], summaries: Mapping[str, dict],
                    config: PlatformConfig, reasons: Mapping[str, str] | None = None) -> SplitRoundResult:
    """Run ``config.split.epochs`` epochs of parallel split learning for the devices ``summaries``.

    Args:
        cloud: The CloudActor handle.
        edges: Device name -> EdgeActor handle (or pooled device handle).
        summaries: Per split device its ``summary()`` (importance, resources, classes).
        config: The platform config.
        reasons: Why each device trains split (for the report).

    Returns:
        The :class:`SplitRoundResult`; on failure only ``failures``/``lost``/``report`` are set.
    """
    timeout, result, start = config.ray.call_timeout_s, SplitRoundResult(), time.perf_counter()
    names = list(summaries)
    try:
        hello = _wait({n: edges[n].split_hello.remote() for n in names}, timeout)
        devices = [{"name": n, "importance": summaries[n]["importance"], **hello[n]} for n in names]
        info = _wait({"cloud": cloud.split_prepare.remote(devices)}, timeout)["cloud"]
        result.failures.update({n: f"split: {why}" for n, why in info["excluded"].items()})
        order = sorted(info["devices"], key=lambda n: info["devices"][n]["index"])
        plan = info["devices"]
        _wait({n: edges[n].split_begin.remote(plan[n]["payload"], info["client_sizes"], plan[n]["index"])
               for n in order}, timeout)
        evaluated = [n for n in order if hello[n]["test_samples"] > 0]
        before = _evaluate(cloud, edges, evaluated, timeout)
        epochs = [_run_epoch(cloud, edges, order, epoch, timeout) for epoch in range(config.split.epochs)]
        after = _evaluate(cloud, edges, evaluated, timeout)
        uploads = _wait({"cloud": cloud.split_finish.remote()}, timeout)["cloud"]
        _wait({n: edges[n].split_end.remote() for n in order}, timeout)
    except _RoundFailed as failed:
        _abort(cloud, names, failed, result)
        return result
    real = time.perf_counter() - start
    _summarise(result, info, order, epochs, before, after, uploads, real, reasons or {})
    return result


def _evaluate(cloud, edges: Mapping[str, Any], names: list[str], timeout: float) -> dict[str, dict]:
    """Split inference on each device's test set: device part -> codec -> server part."""
    smashed = {n: edges[n].split_smash_test.remote() for n in names}
    return _wait({n: cloud.split_evaluate.remote(smashed[n]) for n in names}, timeout)


def _run_epoch(cloud, edges: Mapping[str, Any], order: list[str], epoch: int, timeout: float) -> dict:
    """Submit one epoch (steps, backward passes, aggregation) and wait for it once."""
    counts = _wait({"plan": cloud.split_epoch_plan.remote(epoch)}, timeout)["plan"]
    pending: dict[int, Any] = {}
    others: dict[str, Any] = {}
    for step, row in enumerate(counts):
        active = [k for k, count in enumerate(row) if count > 0]
        smashed = [edges[order[k]].split_forward.remote(epoch, step, pending.pop(k, None)) for k in active]
        for k in list(pending):
            others[f"backward {order[k]} {step}"] = edges[order[k]].split_backward.remote(pending.pop(k))
        outs = cloud.split_server_step.options(num_returns=len(active) + 1).remote(epoch, step, *smashed)
        pending.update(zip(active, outs[:-1], strict=True))
        others[f"server step {step}"] = outs[-1]
    for k, grad in pending.items():
        others[f"backward {order[k]} last"] = edges[order[k]].split_backward.remote(grad)
    ends = {n: edges[n].split_epoch_end.remote() for n in order}
    aggregated = cloud.split_aggregate.options(num_returns=len(order) + 1).remote(*ends.values())
    loads = {f"load {n}": edges[n].split_load.remote(aggregated[k]) for k, n in enumerate(order)}
    refs = {**{f"end {n}": r for n, r in ends.items()}, **loads, **others, "summary": aggregated[-1]}
    done = _wait(refs, timeout)
    return {"summary": done["summary"], "ends": {n: done[f"end {n}"] for n in order}, "steps": len(counts)}


def _abort(cloud, names: list[str], failed: _RoundFailed, result: SplitRoundResult) -> None:
    gather({"abort": cloud.split_abort.remote()}, 30.0)
    for key, failure in failed.failures.items():
        # Keys name the device they wait on ("end d0", "backward d0 3", "d0"); cloud keys name none.
        if failure.kind in ("dead", "timeout"):
            result.lost.update(n for n in names if n in key.split(" "))
    for name in names:
        result.failures.setdefault(name, f"split round aborted: {failed}")
    result.report = {"aborted": str(failed)}


def _summarise(result: SplitRoundResult, info: dict, order: list[str], epochs: list[dict], before: dict,
               after: dict, uploads: dict, real_seconds: float, reasons: Mapping[str, str]) -> None:
    """Traffic, emulated and real time, metrics and report from the round's records."""
    devs = info["devices"]
    compute = {n: ComputeModel(slowdown=devs[n]["slowdown"]) for n in order}
    links = {n: LinkModel(bandwidth=devs[n]["bandwidth"], latency=devs[n]["latency"]) for n in order}
    # The plan divides one bandwidth pool; when only model weights move, all of it is theirs.
    pool, shared = info["plan"]["total_bandwidth"], LinkModel(info["plan"]["total_bandwidth"],
                                                              max(devs[n]["latency"] for n in order))
    emulated = shared.transfer_time(sum(len(devs[n]["payload"]) for n in order))  # device parts go out
    traffic = {n: dict.fromkeys(("bits_activations", "bytes_labels", "bytes_gradients", "bytes_states_up",
                                 "bytes_states_down", "device_seconds", "steps"), 0) for n in order}
    epoch_reports = []
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
        epoch_reports.append({"loss": e["summary"]["loss"], "accuracy": e["summary"]["accuracy"],
                              "steps": e["steps"], "emulated": times})
    m: dict[str, float] = {"split/devices": len(order), "split/epochs": len(epochs),
                           "split/real_seconds": real_seconds, "split/emulated_seconds": emulated,
                           "split/planned_round_seconds": info["plan"]["round_time"]}
    if epoch_reports:
        m["split/train_loss"] = epoch_reports[-1]["loss"]
        m["split/train_accuracy"] = epoch_reports[-1]["accuracy"]
    for n in order:
        t = traffic[n]
        # Evaluation sends the test activations (codec size) and int64 labels.
        t["bytes_eval"] = sum(math.ceil(r[n]["bits"] / 8) + 8 * r[n]["samples"]
                              for r in (before, after) if n in r)
        result.bytes_up[n] = (math.ceil(t["bits_activations"] / 8) + t["bytes_labels"] + t["bytes_states_up"]
                              + t["bytes_eval"])
        result.bytes_down[n] = t["bytes_gradients"] + t["bytes_states_down"]
        result.packages[n] = {"spec": info["spec"], "payload": devs[n]["payload"]}
        m |= {f"split/{n}/{k}": v for k, v in t.items()}
        m |= {f"split/{n}/cut": devs[n]["cut"], f"split/{n}/bandwidth_mbps": devs[n]["bandwidth"] * 8 / 1e6,
              f"split/{n}/device_seconds_emulated": t["device_seconds"] * devs[n]["slowdown"]}
        result.uploads[n] = dict(uploads[n], metrics=_device_metrics(n, info, t, before, after, real_seconds,
                                                                     emulated))
    result.metrics = m
    result.report = {"reasons": dict(reasons), "spec": info["spec"], "stages": info["stages"],
                     "plan": info["plan"], "costs": info["costs"], "client_sizes": info["client_sizes"],
                     "excluded": info["excluded"], "traffic": traffic, "epochs": epoch_reports,
                     "devices": {n: {k: v for k, v in devs[n].items() if k != "payload"} for n in order},
                     "real_seconds": real_seconds, "emulated_seconds": emulated}


def _device_metrics(name: str, info: dict, traffic: dict, before: dict, after: dict, real_seconds: float,
                    emulated_seconds: float) -> dict:
    """The per-device metrics a cycle logs, shaped like ``EdgeService.adapt``'s."""
    b, a, dev = before.get(name, {}), after.get(name, {}), info["devices"][name]
    return {"mode": "split", "cut": dev["cut"], "acc_before": b.get("accuracy"),
            "acc_after": a.get("accuracy"), "loss_before": b.get("loss"), "loss_after": a.get("loss"),
            "prev_acc_before": None, "prev_acc_after": None, "forgetting": None,
            "train_seconds": real_seconds, "emulated_seconds": emulated_seconds, "batches": traffic["steps"],
            "seconds_per_batch": traffic["device_seconds"] / max(1, traffic["steps"]),
            "params": info["cost"]["params"], "flops": info["cost"]["flops"],
            "train_memory_estimate": dev["memory"]}
