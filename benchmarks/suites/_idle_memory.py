"""What an idle virtual device costs: whole-process-tree PSS against registered-but-idle devices.

One pooled campaign per count ``n``: one pool hosts ``n + 1`` devices; all of them take two data
steps (``Platform.observe``: advance, drift, profile), device 0 is served in a cycle in between,
the other ``n`` only rest (in memory up to ``ray.pool_resident_devices``, spilled to their stores
beyond). Then the PSS of the driver, the Ray daemons, the cloud actor and the pool is summed
(:mod:`benchmarks.suites._process_tree`). The per-device cost is the least-squares slope of that
sum against ``n``; flatness is the log-log slope of the increase over ``n = 0``.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

from benchmarks.suites._platform_bench import CampaignShape, campaign_config
from benchmarks.suites._process_tree import tree_pss, wait_quiet

MiB = 2**20


def idle_run(shape: CampaignShape, idle: int, workdir: Path, *, settle_s: float = 2.0, samples: int = 3) -> dict:
    """One campaign with ``idle`` resting devices on the running local Ray (see the module docstring).

    Returns:
        ``{"idle", "pss_mib", "observe_seconds", "cycle_seconds", "failures"}``; ``pss_mib`` is the
        median of ``samples`` tree PSS readings taken after the campaign has settled.
    """
    from eclm.platform import Platform

    cfg = campaign_config(shape, idle + 1, workdir, name=f"idle-{idle}", pool_size=1, tracking_uri=None)
    platform = Platform(cfg, progress=False).start()
    try:
        platform.pretrain()  # with 0 offline epochs it only commits version 0, which cycles refer to
        t0 = time.perf_counter()
        platform.observe()
        observe_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = platform.run_cycle([cfg.devices[0].name])
        cycle_s = time.perf_counter() - t0
        platform.observe()
        wait_quiet(settle_s)
        readings = []
        for _ in range(samples):
            readings.append((tree_pss() or 0) / MiB)
            wait_quiet(0.5)
    finally:
        platform.shutdown()
    return {"idle": idle, "pss_mib": statistics.median(readings), "observe_seconds": observe_s,
            "cycle_seconds": cycle_s, "failures": len(result.failures)}


def idle_fit(runs: list[dict]) -> dict:
    """Per-device slope (MiB, least squares over the runs) and the flatness exponent.

    The exponent is the least-squares slope of ``log(pss(n) - pss(0))`` against ``log(n)`` over the
    runs with ``n > 0`` and an increase of at least 1 MiB (1 = linear, below 1 = sub-linear);
    ``None`` when fewer than two runs qualify (nothing measurably grows).

    Returns:
        ``{"mib_per_device", "fixed_mib", "exponent"}``.
    """
    xs, ys = [r["idle"] for r in runs], [r["pss_mib"] for r in runs]
    if len(set(xs)) < 2:
        return {"mib_per_device": None, "fixed_mib": None, "exponent": None}
    slope, fixed = _line(xs, ys)
    base = next((r["pss_mib"] for r in runs if r["idle"] == 0), None)
    pts = [(math.log(r["idle"]), math.log(r["pss_mib"] - base)) for r in runs
           if base is not None and r["idle"] > 0 and r["pss_mib"] - base >= 1.0]
    exponent = _line(*zip(*pts, strict=True))[0] if len({p[0] for p in pts}) >= 2 else None
    return {"mib_per_device": slope, "fixed_mib": fixed, "exponent": exponent}


def _line(xs, ys) -> tuple[float, float]:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return slope, my - slope * mx


def measure_idle(shape: CampaignShape, counts: list[int], workdir: Path) -> dict:
    """:func:`idle_run` for every count (ascending) on one local Ray, and their :func:`idle_fit`.

    Returns:
        ``{"runs": [...], "fit": {...}, "seconds"}``.
    """
    from eclm import runtime

    began = time.perf_counter()
    owns = runtime.start_ray(None, num_cpus=None, num_devices=1)
    try:
        runs = [idle_run(shape, n, workdir / f"idle-{n}") for n in counts]
    finally:
        if owns:
            runtime.shutdown_ray()
    return {"runs": runs, "fit": idle_fit(runs), "seconds": time.perf_counter() - began}
