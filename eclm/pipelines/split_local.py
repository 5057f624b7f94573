"""Split rounds without Ray: the in-process reference driver and the delay model of an epoch.

:func:`run_local_epochs` drives a :class:`~eclm.pipelines.split_cloud.SplitServerSession` and its
device workers with the actor protocol's call sequence; :func:`emulated_epoch_seconds` turns the
measured per-step records of a round (from either driver) into the duration the epoch would take
on the devices' compute and links. Pure torch, no Ray.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from eclm.pipelines.split_cloud import SplitServerSession
from eclm.pipelines.split_edge import SplitDeviceWorker
from eclm.split import ComputeModel, LinkModel

__all__ = ["emulated_epoch_seconds", "run_epoch_steps", "run_local_epochs"]


def emulated_epoch_seconds(device_records: Mapping[str, Sequence[dict]], server_records: Sequence[dict],
                           compute: Mapping[str, ComputeModel], links: Mapping[str, LinkModel],
                           sync_bytes: Mapping[str, tuple[float, float]] | None = None,
                           shared_bandwidth: float | None = None) -> dict[str, float]:
    """Emulated duration of one synchronous epoch from real measurements (the delay model).

    Per step ``t`` with active devices ``A_t``::

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
    by_step: dict[tuple[int, int], dict[str, dict]] = {}
    real_device = 0.0
    for name, records in device_records.items():
        for r in records:
            by_step.setdefault((r["epoch"], r["step"]), {})[name] = r
            real_device += r["forward_s"] + r["backward_s"]
    steps = 0.0
    for s in server_records:
        active = by_step.get((s["epoch"], s["step"]), {})
        up = max((compute[n].emulated_time(r["forward_s"])
                  + links[n].transfer_time((r["bits_up"] + r["label_bits"]) / 8)
                  for n, r in active.items()), default=0.0)
        down = max((links[n].transfer_time(r["bits_down"] / 8) + compute[n].emulated_time(r["backward_s"])
                    for n, r in active.items()), default=0.0)
        steps += up + s["server_s"] + down
    sync_bytes = sync_bytes or {}
    if shared_bandwidth is None:
        sync = max((links[n].transfer_time(u) + links[n].transfer_time(d) for n, (u, d) in sync_bytes.items()),
                   default=0.0)
    elif sync_bytes:
        pool = LinkModel(shared_bandwidth, max(links[n].latency for n in sync_bytes))
        sync = pool.transfer_time(sum(u for u, _ in sync_bytes.values())) + pool.transfer_time(
            sum(d for _, d in sync_bytes.values()))
    else:
        sync = 0.0
    return {"steps_s": steps, "sync_s": sync, "total_s": steps + sync, "device_compute_s": real_device}


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
