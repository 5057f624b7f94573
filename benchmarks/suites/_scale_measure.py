"""Runs of the ``scale`` suite: one real-Ray campaign per (placement mode, device count).

One local Ray serves every run (started once with enough ``edge`` slots); each run creates its
``Platform`` (cloud actor, edge actors or pools), times start-up and cycles, samples the memory of
the whole process tree, and shuts its actors down before the next run. Before a run, its memory
and duration are extrapolated from the previous runs of the same mode; a run predicted to pass
the memory limit or the time budget is skipped and recorded as such.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.suites._platform_bench import ScaleBenchConfig, campaign_config
from benchmarks.suites._process_tree import TreeMemorySampler, tree, tree_pss, tree_rss, wait_quiet

GiB = 2**30
RunFn = Callable[[ScaleBenchConfig, str, int, Path, str], dict]


def run_scale(config: ScaleBenchConfig, workdir: Path, run: RunFn | None = None, *,
              start_ray: bool = True, settle_s: float = 2.0) -> dict:
    """Every (device count, mode) run that fits; once a mode skips a count it skips all larger ones.

    Args:
        config: What to run.
        workdir: Temporary directory for checkpoints and the MLflow SQLite store.
        run: ``run(config, mode, devices, workdir, tracking_uri) -> record``; default
            :func:`platform_run` (tests pass a fake).
        start_ray: Start (and finally stop) a local Ray for the runs; a Ray already running in this
            process is used instead and left running.
        settle_s: Pause after each run so the stopped actors' processes are gone before the next.

    Returns:
        ``{"baseline": {"rss", "pss"}, "runs": [record or skip record], "seconds"}``.
    """
    run = run or platform_run
    began = time.perf_counter()
    tracking_uri = f"sqlite:///{workdir}/mlruns.db"
    if start_ray:
        from eclm import runtime

        start_ray = runtime.start_ray(None, num_cpus=None, num_devices=max(config.device_counts))
    try:
        procs = tree()
        baseline = {"rss": tree_rss(procs), "pss": tree_pss(procs)}
        runs = []
        done: dict[str, list[dict]] = {mode: [] for mode in config.modes}
        stopped: dict[str, str] = {}
        # Device count outer, mode inner: both modes get the small counts before either gets a
        # large one, so a time budget cut hits the largest runs of both modes alike.
        for n in config.device_counts:
            for mode in config.modes:
                elapsed = time.perf_counter() - began
                skip = stopped.get(mode) or _skip_reason(config, done[mode], n, elapsed, baseline)
                if skip:
                    runs.append({"mode": mode, "devices": n, "status": "skipped", "reason": skip})
                    stopped.setdefault(mode, f"stopped after a smaller run was skipped ({skip})")
                    continue
                try:
                    record = run(config, mode, n, workdir / f"{mode}-{n}", tracking_uri)
                except Exception as err:  # noqa: BLE001 - a failed run is a result, the others go on
                    record = {"mode": mode, "devices": n, "status": "failed", "reason": f"{type(err).__name__}: {err}"}
                runs.append(record)
                if record.get("status") == "ok":
                    done[mode].append(record)
                wait_quiet(settle_s)
        return {"baseline": baseline, "runs": runs, "seconds": time.perf_counter() - began}
    finally:
        if start_ray:
            from eclm import runtime

            runtime.shutdown_ray()


def measure_all(config: ScaleBenchConfig, workdir: Path) -> dict:
    """:func:`run_scale`, then the idle-memory runs and the protocol run, on one local Ray.

    Returns:
        :func:`run_scale`'s dict plus ``"idle"`` and ``"protocol"`` (``None`` when not configured,
        ``{"status": "failed", "reason"}`` when they raised).
    """
    from benchmarks.suites._idle_memory import measure_idle
    from benchmarks.suites._scale_protocol import protocol_run
    from eclm import runtime

    owns = runtime.start_ray(None, num_cpus=None, num_devices=max(*config.device_counts, config.pool_size))
    try:
        raw = run_scale(config, workdir)  # uses the Ray started here
        raw["idle"] = _attempt(lambda: measure_idle(config.campaign, config.idle_counts, workdir / "idle")
                               ) if config.idle_counts else None
        wait_quiet(2.0)
        raw["protocol"] = _attempt(lambda: protocol_run(config, workdir / "protocol",
                                                        f"sqlite:///{workdir}/mlruns.db")) if config.registered else None
        return raw
    finally:
        if owns:
            runtime.shutdown_ray()


def _attempt(measure: Callable[[], dict]) -> dict:
    try:
        return measure()
    except Exception as err:  # noqa: BLE001 - a failed part is a result, the others stand
        return {"status": "failed", "reason": f"{type(err).__name__}: {err}"}


def platform_run(config: ScaleBenchConfig, mode: str, devices: int, workdir: Path, tracking_uri: str) -> dict:
    """One campaign on the running local Ray: start, (pretrain,) timed cycles, shutdown.

    Returns:
        ``{"mode", "devices", "status": "ok", "start_seconds", "pretrain_seconds", "cycles": [durations],
        "cycle_seconds": [...], "failures", "decisions", "peak_rss", "peak_pss", "processes", "total_seconds"}``.
    """
    from eclm.platform import Platform

    pool = config.pool_size if mode == "pooled" else None
    cfg = campaign_config(config.campaign, devices, workdir, name=f"scale-{mode}-{devices}", pool_size=pool,
                          tracking_uri=tracking_uri)
    t_all = time.perf_counter()
    with TreeMemorySampler(interval_s=0.5, pss_every=4) as mem:
        platform = Platform(cfg)
        t0 = time.perf_counter()
        platform.start()
        start_s = time.perf_counter() - t0
        try:
            t0 = time.perf_counter()
            platform.pretrain()  # with 0 offline epochs it only commits version 0, which cycles refer to
            pretrain_s = time.perf_counter() - t0
            cycles, seconds, failures, decisions = [], [], 0, []
            for _ in range(config.cycles):
                platform.observe()  # the drift step Platform.step takes before each cycle (not timed)
                t0 = time.perf_counter()
                result = platform.run_cycle()
                seconds.append(time.perf_counter() - t0)
                cycles.append(dict(result.durations))
                failures += len(result.failures)
                decisions.append(result.merge.decision)
            mem.sample(pss=True)  # everything is alive and has run: the memory that matters
        finally:
            platform.shutdown()
    return {"mode": mode, "devices": devices, "status": "ok", "pool_size": pool, "start_seconds": start_s,
            "pretrain_seconds": pretrain_s, "cycles": cycles, "cycle_seconds": seconds, "failures": failures,
            "decisions": decisions, "peak_rss": mem.peak_rss, "peak_pss": mem.peak_pss, "processes": mem.processes,
            "total_seconds": time.perf_counter() - t_all}


def predict(done: list[dict], n: int, key: Callable[[dict], float]) -> float | None:
    """Linear extrapolation of ``key`` to ``n`` devices from the last two runs (one run: proportional)."""
    if not done:
        return None
    if len(done) == 1:
        return key(done[0]) * n / done[0]["devices"]
    a, b = done[-2], done[-1]
    slope = (key(b) - key(a)) / (b["devices"] - a["devices"])
    return key(b) + slope * (n - b["devices"])


def _skip_reason(config: ScaleBenchConfig, done: list[dict], n: int, elapsed: float, baseline: dict) -> str | None:
    base_pss = baseline.get("pss") or 0
    pss = predict(done, n, lambda r: (r["peak_pss"] or r["peak_rss"]) - base_pss)
    if pss is not None and pss + base_pss > config.memory_limit_gib * GiB:
        return (f"predicted tree memory {(pss + base_pss) / GiB:.1f} GiB (PSS) exceeds the "
                f"{config.memory_limit_gib:g} GiB limit")
    seconds = predict(done, n, lambda r: r["total_seconds"])
    if seconds is not None and elapsed + seconds > config.time_budget_s:
        return (f"predicted run time {seconds:.0f} s would end after the suite's {config.time_budget_s:.0f} s "
                f"budget ({elapsed:.0f} s used)")
    return None
