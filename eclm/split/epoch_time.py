"""The delay model of one synchronous split-learning epoch (docs/split_learning.md).

One function, :func:`epoch_seconds`, turns what every device does in every global step (compute
seconds on the device, bytes over its link) into the seconds the epoch takes. The platform and the
benchmarks apply it to *measured* steps (``eclm.pipelines.split_local.emulated_epoch_seconds``);
the EdgeSplit planner applies it to *predicted* steps, so a plan is chosen by the same clock it is
judged by. Per step ``t`` with active devices ``A_t``::

    T_t = max_{k in A_t} [fwd_tk + lat_k + up_tk / bw_k] + server_t
          + max_{k in A_t} [lat_k + down_tk / bw_k + bwd_tk]

and the epoch ends with the exchange of device parts (up, then the aggregate down): over each
device's own link ``max_k [2 lat_k + (up_k + down_k) / bw_k]``, or, when the shares divide one pool
of ``shared_bandwidth`` that nothing else uses meanwhile, ``2 max_k lat_k + (sum up + sum down) /
shared_bandwidth``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["epoch_seconds"]


def _phase(compute: np.ndarray, nbytes: np.ndarray, active: np.ndarray, latencies: np.ndarray,
           bandwidths: np.ndarray) -> np.ndarray:
    """Per step, the slowest active device's ``compute + latency + bytes / bandwidth`` (0 if none)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        link = latencies + np.where(nbytes > 0, nbytes / bandwidths, 0.0)
    return np.where(active, compute + link, -np.inf).max(axis=-1, initial=0.0)


def epoch_seconds(forward_s: ArrayLike, backward_s: ArrayLike, bytes_up: ArrayLike, bytes_down: ArrayLike,
                  server_s: ArrayLike, active: ArrayLike, bandwidths: ArrayLike, latencies: ArrayLike,
                  sync_up: ArrayLike | None = None, sync_down: ArrayLike | None = None,
                  shared_bandwidth: float | None = None, exchanging: ArrayLike | None = None,
                  ) -> dict[str, float]:
    """Seconds of one synchronous epoch of ``T`` global steps and ``N`` devices.

    Args:
        forward_s: ``(T, N)`` device seconds of each step's forward pass (on the device's speed).
        backward_s: ``(T, N)`` device seconds of each step's backward pass.
        bytes_up: ``(T, N)`` bytes each device sends in a step (activations and labels).
        bytes_down: ``(T, N)`` bytes each device receives in a step (the gradient).
        server_s: ``(T,)`` server seconds of each step.
        active: ``(T, N)`` whether the device takes part in the step; inactive entries are ignored.
        bandwidths: ``(N,)`` bytes/s of each device's link (its share of the pool).
        latencies: ``(N,)`` one-way latency of each link in seconds.
        sync_up: ``(N,)`` bytes of each device part sent up at epoch end; ``None``: no exchange.
        sync_down: ``(N,)`` bytes of the aggregate each device receives; ``None``: as ``sync_up``.
        shared_bandwidth: bytes/s of the pool the exchange uses; ``None``: each device's own link.
        exchanging: ``(N,)`` which devices take part in the exchange; ``None``: all.

    Returns:
        ``{"steps_s", "sync_s", "total_s"}`` in seconds.

    Raises:
        ValueError: If the shapes disagree.
    """
    active = np.asarray(active, dtype=bool)
    steps, n = active.shape
    arrays = [np.asarray(a, dtype=float) for a in (forward_s, backward_s, bytes_up, bytes_down)]
    bandwidths, latencies = np.asarray(bandwidths, dtype=float), np.asarray(latencies, dtype=float)
    server = np.asarray(server_s, dtype=float)
    if any(a.shape != (steps, n) for a in arrays) or server.shape != (steps,) \
            or bandwidths.shape != (n,) or latencies.shape != (n,):
        raise ValueError(f"epoch_seconds: per-step arrays must be {(steps, n)}, server_s {(steps,)}, "
                         f"bandwidths and latencies {(n,)}")
    forward, backward, up, down = arrays
    up_phase = _phase(forward, up, active, latencies, bandwidths)
    down_phase = _phase(backward, down, active, latencies, bandwidths)
    steps_s = float(np.sum(up_phase + server + down_phase))
    sync_s = _sync_seconds(sync_up, sync_down, bandwidths, latencies, shared_bandwidth, exchanging)
    return {"steps_s": steps_s, "sync_s": sync_s, "total_s": steps_s + sync_s}


def _sync_seconds(sync_up: ArrayLike | None, sync_down: ArrayLike | None, bandwidths: np.ndarray,
                  latencies: np.ndarray, shared_bandwidth: float | None, exchanging: ArrayLike | None) -> float:
    if sync_up is None:
        return 0.0
    up = np.asarray(sync_up, dtype=float)
    down = up if sync_down is None else np.asarray(sync_down, dtype=float)
    mask = np.ones(bandwidths.shape, dtype=bool) if exchanging is None else np.asarray(exchanging, dtype=bool)
    if up.shape != bandwidths.shape or down.shape != bandwidths.shape or mask.shape != bandwidths.shape:
        raise ValueError(f"epoch_seconds: sync_up, sync_down and exchanging must have shape {bandwidths.shape}")
    if not mask.any():
        return 0.0
    up, down, lat = up[mask], down[mask], latencies[mask]
    if shared_bandwidth is None:
        return float(np.max(2 * lat + (up + down) / bandwidths[mask]))
    return float(2 * lat.max() + (up.sum() + down.sum()) / shared_bandwidth)
