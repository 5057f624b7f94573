"""Split rounds without Ray: the in-process reference driver and the delay model of an epoch.

:func:`run_local_epochs` drives a :class:`~eclm.pipelines.split_cloud.SplitServerSession` and its
device workers with the actor protocol's call sequence; :func:`emulated_epoch_seconds` turns the
measured per-step records of a round (from either driver) into the duration the epoch would take
on the devices' compute and links. Pure torch, no Ray.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from eclm.pipelines.split_cloud import SplitServerSession
from eclm.pipelines.split_edge import SplitDeviceWorker
from eclm.split import ComputeModel, LinkModel
from eclm.split.epoch_time import epoch_seconds

__all__ = ["emulated_epoch_seconds", "run_epoch_steps", "run_local_epochs"]


def emulated_epoch_seconds(device_records: Mapping[str, Sequence[dict]], server_records: Sequence[dict],
                           compute: Mapping[str, ComputeModel], links: Mapping[str, LinkModel],
                           sync_bytes: Mapping[str, tuple[float, float]] | None = None,
                           shared_bandwidth: float | None = None) -> dict[str, float]:
    """Emulated duration of one synchronous epoch from real measurements (the delay model).

    The measured steps go through :func:`eclm.split.epoch_time.epoch_seconds`, the function the
    EdgeSplit planner minimises. Per step ``t`` with active devices ``A_t``::

        T_t = max_{k in A_t} [emu_k(forward_k) + link_k(up_k)] + server_t
              + max_{k in A_t} [link_k(down_k) + emu_k(backward_k)]

    with ``emu_k(s) = s * slowdown_k`` (real host seconds scaled to the device's speed) and
    ``link_k(n) = latency_k + n / bandwidth_k``; ``up`` is the codec's exact activation bytes plus
    the labels, ``down`` the float32 gradient. The epoch ends with the device-part exchange,
    ``max_k [link_k(state up) + link_k(state down)]``; with ``shared_bandwidth`` (the EdgeSplit
    setting: the shares divide one pool and nothing else is sent meanwhile) it takes
    ``2 max_k latency_k + (sum up + sum down) / shared_bandwidth`` instead. The server runs at host
    speed.

    Returns:
        ``{"steps_s", "sync_s", "total_s", "device_compute_s"}`` (the last in real seconds).
    """
    sync_bytes = sync_bytes or {}
    names = list(dict.fromkeys([*device_records, *sync_bytes]))
    column = {n: k for k, n in enumerate(names)}
    row = {(s["epoch"], s["step"]): t for t, s in enumerate(server_records)}
    shape = (len(server_records), len(names))
    fwd, bwd, up, down = np.zeros(shape), np.zeros(shape), np.zeros(shape), np.zeros(shape)
    active = np.zeros(shape, dtype=bool)
    real_device = 0.0
    for name, records in device_records.items():
        for r in records:
            real_device += r["forward_s"] + r["backward_s"]
            t = row.get((r["epoch"], r["step"]))
            if t is None:  # a device step without a server step is not part of the epoch
                continue
            k = column[name]
            active[t, k] = True
            fwd[t, k] = compute[name].emulated_time(r["forward_s"])
            bwd[t, k] = compute[name].emulated_time(r["backward_s"])
            up[t, k], down[t, k] = (r["bits_up"] + r["label_bits"]) / 8, r["bits_down"] / 8
    times = epoch_seconds(
        fwd, bwd, up, down, [s["server_s"] for s in server_records], active,
        [links[n].bandwidth for n in names], [links[n].latency for n in names],
        sync_up=[sync_bytes.get(n, (0.0, 0.0))[0] for n in names],
        sync_down=[sync_bytes.get(n, (0.0, 0.0))[1] for n in names],
        shared_bandwidth=shared_bandwidth, exchanging=[n in sync_bytes for n in names])
    return {**times, "device_compute_s": real_device}


def run_epoch_steps(server: SplitServerSession, workers: Sequence[SplitDeviceWorker], epoch: int) -> None:
    """Every global step of one epoch, in-process, without the epoch-end aggregation.

    A device's pending gradient rides with its next forward call, as over the actors; the last
    gradients are applied after the final step.
    """
    pending: dict[int, bytes] = {}
    for step, row in enumerate(server.epoch_plan(epoch)):
        active = [k for k, count in enumerate(row) if count > 0]
        messages = [workers[k].forward(epoch, step, pending.pop(k, None)) for k in active]
        for k in list(pending):
            workers[k].backward(pending.pop(k))
        pending.update(zip(active, server.server_step(epoch, step, messages), strict=True))
    for k, grad in pending.items():
        workers[k].backward(grad)


def run_local_epochs(server: SplitServerSession, workers: Sequence[SplitDeviceWorker], epochs: int,
                     start_epoch: int = 0) -> list[dict]:
    """Drive a split round in-process with the actor protocol's call sequence (reference driver).

    Returns:
        Per epoch ``{"epoch", "loss", "accuracy", "samples", "records", "device_records", "sync_bytes"}``.

    Raises:
        ValueError: If ``workers`` are not the session's devices in client order.
    """
    if [w.name for w in workers] != server.devices:
        raise ValueError(f"workers {[w.name for w in workers]} must be the session's devices "
                         f"{server.devices}")
    history = []
    for epoch in range(start_epoch, start_epoch + epochs):
        run_epoch_steps(server, workers, epoch)
        ends = [w.epoch_end() for w in workers]
        new = server.aggregate({e["device"]: e["state"] for e in ends})
        for w in workers:
            w.load(new[w.name])
        summary = server.epoch_summary()
        summary.update(epoch=epoch, device_records={e["device"]: e["records"] for e in ends},
                       sync_bytes={e["device"]: (float(len(e["state"])), float(len(new[e["device"]])))
                                   for e in ends})
        history.append(summary)
    return history
