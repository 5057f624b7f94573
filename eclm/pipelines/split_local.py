"""The delay model of a split epoch: measured steps -> the seconds they would take on the devices.

:func:`emulated_epoch_seconds` turns the per-step records of a split round (the devices'
:class:`~eclm.pipelines.split_edge.SplitDeviceWorker` records and the server session's) into the
duration the epoch would take on the devices' compute and links. The round itself is driven by
:func:`eclm.campaign.split_round.run_split_round`, in-process or over Ray. Pure numpy, no Ray.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from eclm.split import ComputeModel, LinkModel
from eclm.split.epoch_time import epoch_seconds

__all__ = ["emulated_epoch_seconds"]


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
