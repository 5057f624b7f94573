"""Resource profiler: device resources (configured or measured) -> sub-model budget.

Budget model (documented, deliberately simple):

* memory, dense training (``adaptation.trainable: all``): half for parameters (fp32 weights +
  grads + momentum + a copy = 16 bytes/param), half for activations of one training batch (stored
  activations and their gradients): ``max_params = 0.5 * mem / 16`` and
  ``max_activation_bytes = 0.5 * mem / (2 * batch)``;
* memory, module-sparse training (``adaptation.trainable: budgeted``): half for the held
  sub-model's fp32 weights, ``max_params = 0.5 * mem / 4``, the same activation limit as dense
  training (so backward may still reach the stem: input-level shifts such as image corruptions
  are best met in the first layers), and the whole memory bounds one adaptation
  (``max_train_memory = mem``), which the trainable subset is chosen within
  (:mod:`eclm.modules.trainable`);
* compute: one training batch (forward + backward = 3x forward FLOPs) should take
  ``target_step_seconds``: ``max_flops = gflops * 1e9 * target / (3 * batch)`` per sample;
* bandwidth: shipping the sub-model should take ``max_transfer_seconds``:
  ``max_payload_bytes = bandwidth_bytes_per_s * max_transfer_seconds``;
* ``params_fraction`` caps parameters at that share of the cloud model.
"""

from __future__ import annotations

import time

import psutil
import torch

from eclm.modules.spec import DeviceProfile


def measure_gflops(size: int = 256, repeats: int = 5) -> float:
    """Sustained float32 matmul GFLOP/s of this process (torch's current thread setting)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    seconds = time.perf_counter() - start
    return 2 * size**3 * repeats / max(seconds, 1e-9) / 1e9


def measure_resources(compute: bool = True) -> dict[str, float]:
    """Measured resources of the node this process runs on: available memory (and compute)."""
    out = {"memory_mb": psutil.virtual_memory().available / 2**20}
    if compute:
        out["gflops"] = measure_gflops()
    return out


def bandwidth_mbps(nbytes: int, seconds_with_payload: float, seconds_without: float) -> float | None:
    """Link bandwidth in Mbit/s from timing the same call with and without an ``nbytes`` payload
    (the difference removes scheduling overhead); ``None`` if the difference is not positive."""
    extra = seconds_with_payload - seconds_without
    return nbytes * 8 / extra / 1e6 if extra > 0 else None


def budget_from_resources(
    name: str,
    resources: dict[str, float | None],
    *,
    full_params: float,
    batch_size: int,
    target_step_seconds: float,
    max_transfer_seconds: float,
    sparse: bool = False,
) -> DeviceProfile:
    """Turn resources (``memory_mb``, ``gflops``, ``bandwidth_mbps``, ``params_fraction``; any may
    be missing) into a :class:`DeviceProfile` budget per the model in the module docstring
    (``sparse``: the memory rule of module-sparse training)."""
    limits: dict[str, float] = {}
    mem = resources.get("memory_mb")
    if mem:
        mem_bytes = mem * 2**20
        if sparse:
            limits["max_params"] = 0.5 * mem_bytes / 4
            limits["max_activation_bytes"] = 0.5 * mem_bytes / (2 * batch_size)
            limits["max_train_memory"] = mem_bytes
        else:
            limits["max_params"] = 0.5 * mem_bytes / 16
            limits["max_activation_bytes"] = 0.5 * mem_bytes / (2 * batch_size)
    gflops = resources.get("gflops")
    if gflops:
        limits["max_flops"] = gflops * 1e9 * target_step_seconds / (3 * batch_size)
    bw = resources.get("bandwidth_mbps")
    if bw:
        limits["max_payload_bytes"] = bw * 1e6 / 8 * max_transfer_seconds
    frac = resources.get("params_fraction")
    if frac:
        cap = frac * full_params
        limits["max_params"] = min(limits.get("max_params", cap), cap)
    return DeviceProfile(name=name, **limits)
