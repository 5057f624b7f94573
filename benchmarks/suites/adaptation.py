"""Suite ``adaptation``: eclm against the baselines users would pick instead (ALGORITHMS.md 1.6).

NA, LA, FedAvg, HeteroFL and eclm run on the same data, devices, drift schedule, seeds, backbone
family and adaptation hyper-parameters, in one run, each through the platform's own cycle
coordinator over in-process services (the code the actors run; see
:mod:`benchmarks.baselines.experiment`). One job is one (label skew, seed); jobs run in parallel
worker processes with one torch thread each.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from benchmarks.baselines.config import AdaptationBenchConfig
from benchmarks.baselines.experiment import run_job
from benchmarks.baselines.memory_probe import measure_adaptation_memory
from benchmarks.baselines.methods import METHODS
from benchmarks.baselines.plots import plot_accuracy_over_cycles
from benchmarks.baselines.summary import mean_std, setting_summary
from benchmarks.baselines.tables import (
    accuracy_table,
    cost_table,
    pm,
    ratio_table,
    reference_table,
    server_table,
)
from benchmarks.registry import register_suite
from eclm.pipelines.adaptation import training_memory_bytes

LABELS = {name: m.label for name, m in METHODS.items()}


@register_suite("adaptation", num_threads=1)
def adaptation_suite(mode: str, out_dir: Path) -> dict:
    """Adaptation under drift: NA, LA, FedAvg, HeteroFL and eclm side by side (accuracy, forgetting, traffic, memory)."""
    result = run_adaptation_benchmark(AdaptationBenchConfig.for_mode(mode), out_dir)
    for line in result["summary"]:  # the headline figures, also on the console
        print(f"[adaptation] {line}", flush=True)
    return result


def run_adaptation_benchmark(config: AdaptationBenchConfig, out_dir: Path | None = None,
                             jobs: list[dict] | None = None) -> dict:
    """Run every (label skew, seed) job, the memory probe, and build the suite result.

    Args:
        config: What to run (:meth:`AdaptationBenchConfig.for_mode` or ``.tiny``).
        out_dir: Where the PNG plots go; ``None`` skips plots.
        jobs: Already computed :func:`run_job` results to aggregate instead of running them.

    Returns:
        ``{"tables", "plots", "summary", "config", "settings": {skew: aggregate}, "measured_memory",
        "jobs": [per-job timings], "load_average"}``.
    """
    load_before = _load_average()
    t0 = time.perf_counter()
    jobs = sorted(jobs, key=lambda j: (j["label_skew"], j["seed"])) if jobs is not None else _run_jobs(config)
    jobs_s = time.perf_counter() - t0
    by_skew = {skew: setting_summary([j for j in jobs if j["label_skew"] == skew], config.methods, config.cycles)
               for skew in config.label_skews}
    measured, probe = None, None
    if config.memory_probe:
        probe = _probe_memory(config, jobs[0])
        measured = _measured_by_method(probe)
    plots = []
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for skew, summary in by_skew.items():
            name = f"adaptation_accuracy_{skew}of10.png"
            title = (f"{skew} of 10 classes per device, {config.sampled} of {config.num_devices} devices per cycle, "
                     f"mean ± std over {config.seeds} seeds")
            plot_accuracy_over_cycles(summary, LABELS, title, out_dir / name)
            plots.append(name)
    tables = [accuracy_table(skew, s, LABELS, config).to_dict() for skew, s in by_skew.items()]
    tables += [cost_table(by_skew, LABELS, measured).to_dict(), ratio_table(by_skew, LABELS, measured).to_dict(),
               server_table(by_skew).to_dict(),
               reference_table(by_skew, LABELS, _full_training_memory(jobs[0]), probe).to_dict()]
    return {
        "tables": tables,
        "plots": plots,
        "summary": _headlines(by_skew, measured),
        "config": config.model_dump(mode="json"),
        "settings": {str(k): v for k, v in by_skew.items()},
        "measured_memory": {"per_spec": probe, "per_method": measured},
        "jobs": [{"label_skew": j["label_skew"], "seed": j["seed"], "pretrain_seconds": j["pretrain_seconds"],
                  "cloud_val_acc": j["cloud_val_acc"], "method_seconds": j["method_seconds"]} for j in jobs],
        "jobs_seconds": jobs_s,
        "load_average": {"before": load_before, "after": _load_average()},
    }


def _run_jobs(config: AdaptationBenchConfig) -> list[dict]:
    """All (skew, seed) jobs, in parallel spawned workers when ``config.workers`` > 0."""
    keys = [(skew, seed) for seed in range(config.seeds) for skew in config.label_skews]
    payload = config.model_dump_json()
    if config.workers == 0:
        results = [run_job(payload, skew, seed, threads=1) for skew, seed in keys]
    else:
        # spawn, not fork: the parent may hold torch's thread pool, which a forked child cannot use.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(config.workers, len(keys)), mp_context=ctx) as pool:
            futures = [pool.submit(run_job, payload, skew, seed, 1) for skew, seed in keys]
            results = [f.result() for f in futures]
    return sorted(results, key=lambda j: (j["label_skew"], j["seed"]))


def _probe_memory(config: AdaptationBenchConfig, job: dict) -> list[dict]:
    """Peak-RSS probe for one device per tier and method (last cycle of ``job``) and the full model."""
    specs: dict[str, list[list[int]]] = {"full model": [list(range(n)) for n in job["layer_sizes"]]}
    seen = {tuple(map(tuple, specs["full model"])): "full model"}
    aliases: dict[str, str] = {}
    for method, records in job["records"].items():
        if not METHODS[method].adapts:
            continue
        last = max(r["round"] for r in records)
        for tier in sorted({r["tier"] for r in records}):
            rec = next((r for r in records if r["round"] == last and r["tier"] == tier), None)
            if rec is None:
                continue
            key, groups = f"{method}@{tier}", tuple(map(tuple, rec["groups"]))
            if groups in seen:
                aliases[key] = seen[groups]  # identical sub-model: measure once
            else:
                seen[groups] = key
                specs[key] = rec["groups"]
    with tempfile.TemporaryDirectory() as tmp:
        a = config.platform_config(job["label_skew"], job["seed"], Path(tmp)).adaptation
    request = {"arch": job["arch"], "modules_per_layer": config.modules_per_layer, "input_size": [3, 32, 32],
               "classes": list(range(job["label_skew"])), "samples": config.samples_per_device[1],
               "epochs": a.epochs, "lr": a.lr, "momentum": a.momentum, "batch_size": a.batch_size,
               "replay_capacity": a.replay_capacity, "replay_ratio": a.replay_ratio, "specs": specs}
    results = {r["key"]: r for r in measure_adaptation_memory(request)}
    for alias, target in aliases.items():
        results[alias] = dict(results[target], key=alias, same_as=target)
    return list(results.values())


def _measured_by_method(probe: list[dict]) -> dict[str, dict]:
    """Mean measured adaptation RSS per method over its tier representatives (and the full model)."""
    out: dict[str, dict] = {}
    for r in probe:
        if "error" in r:
            continue
        method = r["key"].split("@")[0]
        out.setdefault(method, []).append(r["adaptation_rss"])
    return {m: mean_std(v) for m, v in out.items()}


def _headlines(by_skew: dict[int, dict], measured: dict | None) -> list[str]:
    lines = []
    for skew, s in by_skew.items():
        e = s["methods"].get("eclm")
        if e is None:
            continue
        best = max((m for m in s["methods"] if m != "eclm"),
                   key=lambda m: s["methods"][m]["acc_after"]["mean"] or 0.0, default=None)
        lines.append(f"{skew} classes/device: eclm accuracy after adaptation {pm(e['acc_after'])} (10-way), "
                     f"{pm(e['acc_after_dev'])} (own classes); best baseline {LABELS.get(best, best)} "
                     f"{pm(s['methods'][best]['acc_after']) if best else '-'} (10-way).")
        for base, r in s["ratios"].items():
            memory = f"; analytic memory x{pm(r['memory_ratio'], 1, 2)}" if r["memory_ratio"]["mean"] else ""
            lines.append(f"{skew} classes/device, eclm vs {LABELS[base]}: accuracy gain {pm(r['acc_gain'], 100, 1)} "
                         f"points (10-way), {pm(r['acc_gain_dev'], 100, 1)} (own classes); traffic x"
                         f"{pm(r['traffic_ratio'], 1, 2)}{memory}.")
    if measured and measured.get("full model") and measured.get("eclm"):
        lines.append(f"Measured adaptation RSS: eclm {measured['eclm']['mean'] / 2**20:.1f} MiB vs full model "
                     f"{measured['full model']['mean'] / 2**20:.1f} MiB.")
    return lines


def _full_training_memory(job: dict) -> float:
    """The platform's analytic training-memory estimate for the full cloud model on a device."""
    full = job["full_cost"]
    return training_memory_bytes(full["params"], full["activation_bytes"], job["effective_batch"])


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
