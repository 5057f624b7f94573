"""Suite ``adaptation``: eclm against the baselines users would pick instead (issue #11's protocol).

NA, LA, FedAvg and HeteroFL (each federated baseline as published and with the platform's shared
codec) and eclm run on the same data, devices, drift schedule, seeds, backbone family and training
hyper-parameters, at two adaptation budgets (1 and 3 local epochs), each through the platform's
own cycle coordinator over in-process services (the code the actors run; see
:mod:`benchmarks.baselines.experiment`). Per cycle: accuracy on arrival and after adaptation;
per served device and cycle: traffic and training seconds; per tier: modelled and measured
training memory (:mod:`benchmarks.baselines.memory_probe`). The targets are
:mod:`benchmarks.baselines.target_figures`. One job is one (label skew, seed); jobs run in
parallel worker processes with one torch thread each; each finished job (and each seed's memory
probe) is kept in :mod:`benchmarks.progress`, so a full run that a session cannot finish resumes.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import Counter
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
    cycle_table,
    delivery_table,
    pm,
    ratio_table,
    reference_table,
    server_table,
    tier_table,
)
from benchmarks.baselines.target_figures import best_baselines, target_records
from benchmarks.parallel import run_jobs
from benchmarks.progress import REPO_ROOT, Progress
from benchmarks.registry import register_suite
from benchmarks.targets import git_commit
from eclm.pipelines.adaptation import training_memory_bytes

LABELS = {name: m.label for name, m in METHODS.items()}


@register_suite("adaptation", num_threads=1)
def adaptation_suite(mode: str, out_dir: Path) -> dict:
    """Adaptation under drift: NA, LA, FedAvg, HeteroFL and eclm side by side (accuracy on arrival and after
    adaptation, forgetting, traffic, memory, time) at 1 and 3 local epochs, with the issue's targets."""
    config = AdaptationBenchConfig.for_mode(mode)
    progress = Progress.open(Path(out_dir), "adaptation", f"{mode}\0{config.model_dump_json()}")
    result = run_adaptation_benchmark(config, out_dir, progress=progress)
    for line in result["summary"]:  # the headline figures, also on the console
        print(f"[adaptation] {line}", flush=True)
    return result


def run_adaptation_benchmark(config: AdaptationBenchConfig, out_dir: Path | None = None,
                             jobs: list[dict] | None = None, progress: Progress | None = None) -> dict:
    """Run every (label skew, seed) job, the memory probe, and build the suite result.

    Args:
        config: What to run (:meth:`AdaptationBenchConfig.for_mode` or ``.tiny``).
        out_dir: Where the PNG plots go; ``None`` skips plots.
        jobs: Already computed :func:`run_job` results to aggregate instead of running them.
        progress: Where finished jobs and memory probes are kept (:mod:`benchmarks.progress`);
            those found there are not run again.

    Returns:
        ``{"tables", "plots", "summary", "targets", "config", "settings": {setting: aggregate},
        "measured_memory", "jobs": [per-job timings], "part_commits", "load_average"}``; a setting
        is one label skew at one epoch budget (``"2 classes, 3 epochs"``).
    """
    load_before = _load_average()
    t0 = time.perf_counter()
    jobs = sorted(jobs, key=lambda j: (j["label_skew"], j["seed"])) if jobs is not None else _run_jobs(
        config, progress)
    jobs_s = time.perf_counter() - t0
    settings = {setting_name(skew, e): setting_summary([_run_view(j, e) for j in jobs if j["label_skew"] == skew],
                                                       config.methods, config.cycles, config.arrival_from)
                for skew in config.label_skews for e in config.epoch_budgets}
    probe, memory = _memory(config, jobs, progress) if config.memory_probe else ([], None)
    measured = _measured_by_method(probe)
    plots = _plots(config, settings, out_dir) if out_dir is not None else []
    best = best_baselines(jobs, config.cycles, config.arrival_from)
    tables = [accuracy_table(name, s, LABELS, config).to_dict() for name, s in settings.items()]
    tables += [cycle_table(name, s, LABELS, config).to_dict() for name, s in settings.items()]
    tables += [cost_table(settings, LABELS, measured).to_dict(), ratio_table(settings, LABELS, measured).to_dict(),
               tier_table(jobs, probe, LABELS, config).to_dict(), server_table(settings).to_dict(),
               delivery_table(jobs, LABELS).to_dict(),
               reference_table(settings.get(setting_name(2, 3)), LABELS, _full_training_memory(jobs[0]),
                               probe).to_dict()]
    targets = target_records(jobs, config.cycles, config.arrival_from, memory)
    return {
        "tables": tables,
        "plots": plots,
        "summary": _headlines(settings, measured, targets, best),
        "targets": targets,
        "config": config.model_dump(mode="json"),
        "settings": settings,
        "best_baselines": best,
        "measured_memory": {"per_spec": probe, "per_method": measured, "weakest_vs_full": memory},
        "jobs": [{"label_skew": j["label_skew"], "seed": j["seed"], "pretrain_seconds": j["pretrain_seconds"],
                  "cloud_val_acc": j["cloud_val_acc"],
                  "method_seconds": {e: r["method_seconds"] for e, r in j["runs"].items()}} for j in jobs],
        "jobs_seconds": jobs_s,
        "part_commits": dict(Counter(j.get("progress_commit", "this run") for j in jobs)),
        "load_average": {"before": load_before, "after": _load_average()},
    }


def setting_name(skew: int, epochs: int) -> str:
    return f"{skew} classes, {epochs} epoch{'s' if epochs != 1 else ''}"


def _run_view(job: dict, epochs: int) -> dict:
    """One epoch budget's run of a job, in the shape :func:`setting_summary` reads."""
    run = job["runs"][str(epochs)]
    return {"records": run["records"], "server": run["server"]}


def _plots(config: AdaptationBenchConfig, settings: dict[str, dict], out_dir: Path) -> list[str]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = []
    for name, summary in settings.items():
        file = "adaptation_accuracy_" + name.replace(" classes, ", "of10_").replace(" epochs", "ep").replace(
            " epoch", "ep") + ".png"
        title = (f"{name}: {config.sampled} of {config.num_devices} devices per cycle, "
                 f"mean ± std over {config.seeds} seeds")
        plot_accuracy_over_cycles(summary, LABELS, title, out_dir / file)
        plots.append(file)
    return plots


def _run_jobs(config: AdaptationBenchConfig, progress: Progress | None = None) -> list[dict]:
    """All (skew, seed) jobs, in parallel spawned workers when ``config.workers`` > 0; with
    ``progress``, jobs kept there are taken from it and each finished job is kept at once."""
    payload, where = config.model_dump_json(), None if progress is None else str(progress.directory)
    jobs = [(payload, skew, seed, 1, where) for seed in range(config.seeds) for skew in config.label_skews]
    results = run_jobs(kept_job, jobs, config.workers)
    return sorted(results, key=lambda j: (j["label_skew"], j["seed"]))


def kept_job(config_json: str, label_skew: int, seed: int, threads: int = 1, progress: str | None = None) -> dict:
    """:func:`~benchmarks.baselines.experiment.run_job`, or its record from the progress directory
    ``progress`` when a stopped run had finished it; a new record is kept there the moment it ends."""
    if progress is None:
        return run_job(config_json, label_skew, seed, threads)
    job, resumed = Progress(progress).run_once(f"skew{label_skew}_seed{seed}", lambda: run_job(
        config_json, label_skew, seed, threads), git_commit(REPO_ROOT))
    if resumed:
        print(f"[adaptation] {label_skew} classes, seed {seed}: resumed", flush=True)
    return job


def _memory(config: AdaptationBenchConfig, jobs: list[dict],
            progress: Progress | None = None) -> tuple[list[dict], dict[int, float]]:
    """The memory probe: every adapting method's tier representatives (and the full model) on the
    first job; eclm's weakest tier and the full model on the other seeds' jobs (one per seed).
    With ``progress``, each job's probe is kept (and taken from there when a stopped run had it).

    Returns:
        ``(probe records of the first job, {seed: eclm weakest tier / full model adaptation RSS})``.
    """
    ratios: dict[int, float] = {}
    probe: list[dict] = []
    first_skew = jobs[0]["label_skew"]
    for job in (j for j in jobs if j["label_skew"] == first_skew):
        def run(job: dict = job, weakest: bool = bool(probe)) -> dict:
            return {"records": _probe_memory(config, job, only_weakest_eclm=weakest)}

        key = f"memory_skew{first_skew}_seed{job['seed']}_{'weakest' if probe else 'tiers'}"
        records = (run() if progress is None else progress.run_once(key, run, git_commit(REPO_ROOT))[0])["records"]
        probe = probe or records
        full = next((r for r in records if r["key"] == "full model" and "error" not in r), None)
        weakest = next((r for r in records if r["key"] == "eclm@weakest" and "error" not in r), None)
        if full and weakest and full["adaptation_rss"]:
            ratios[job["seed"]] = weakest["adaptation_rss"] / full["adaptation_rss"]
    return probe, ratios


def _probe_memory(config: AdaptationBenchConfig, job: dict, only_weakest_eclm: bool = False) -> list[dict]:
    """Peak-RSS probe for one device per tier and method (last cycle of the largest epoch budget of
    ``job``, with the trainable spec it trained), eclm's weakest tier, and the full model trained
    densely. Identical sub-models with identical plans are measured once."""
    epochs = max(config.epoch_budgets)
    entries: dict[str, dict] = {"full model": {"groups": [list(range(n)) for n in job["layer_sizes"]],
                                               "trainable": None}}
    for method, records in job["runs"][str(epochs)]["records"].items():
        if not METHODS[method].adapts or (only_weakest_eclm and method != "eclm"):
            continue
        last = [r for r in records if r["round"] == max(r["round"] for r in records)]
        tiers = {} if only_weakest_eclm else {f"{method}@{_tier_name(r)}": r for r in last}
        if method == "eclm":
            tiers["eclm@weakest"] = min(last, key=_weakness)
        entries |= {k: {"groups": r["groups"], "trainable": r["trainable"], "cache_limit": _headroom(r)}
                    for k, r in tiers.items()}
    first_of: dict[str, str] = {}
    for key, entry in entries.items():
        first_of.setdefault(json.dumps(entry, sort_keys=True), key)
    with tempfile.TemporaryDirectory() as tmp:
        a = config.platform_config(job["label_skew"], job["seed"], Path(tmp), epochs).adaptation
    request = {"arch": job["arch"], "modules_per_layer": config.modules_per_layer, "input_size": [3, 32, 32],
               "classes": list(range(job["label_skew"])), "samples": config.samples_per_device[1],
               "epochs": a.epochs, "lr": a.lr, "momentum": a.momentum, "batch_size": a.batch_size,
               "replay_capacity": a.replay_capacity, "replay_ratio": a.replay_ratio,
               "specs": {key: entries[key] for key in first_of.values()}}
    results = {r["key"]: r for r in measure_adaptation_memory(request)}
    out = []
    for key, entry in entries.items():
        target = first_of[json.dumps(entry, sort_keys=True)]
        out.append(results[target] if target == key else dict(results[target], key=key, same_as=target))
    return out


def _headroom(record: dict) -> float | None:
    """The training memory a device's plan leaves free (what it may fill with cached frozen-stage
    outputs, :meth:`~eclm.pipelines.edge_resources.EdgeResourcesMixin.cache_headroom`)."""
    if not record.get("memory_mb") or record.get("trainable") is None or record.get("train_memory") is None:
        return None
    return max(0.0, record["memory_mb"] * 2**20 - record["train_memory"])


def _tier_name(record: dict) -> str:
    memory = record.get("memory_mb")
    return f"{record['tier']:g}" + (f"/{memory:g}MB" if memory else "")


def _weakness(record: dict) -> tuple[float, float]:
    """Sort key: the least memory first, then the smallest parameter share."""
    return (record.get("memory_mb") or float("inf"), record["tier"] or 1.0)


def _measured_by_method(probe: list[dict]) -> dict[str, dict]:
    """Mean measured adaptation RSS per method over its tier representatives (and the full model)."""
    out: dict[str, list] = {}
    for r in probe:
        if "error" in r or r["key"].endswith("@weakest"):
            continue
        out.setdefault(r["key"].split("@")[0], []).append(r["adaptation_rss"])
    return {m: mean_std(v) for m, v in out.items()}


def _headlines(settings: dict[str, dict], measured: dict, targets: list[dict], best: dict) -> list[str]:
    lines = []
    for name, s in settings.items():
        e = s["methods"].get("eclm")
        if e is None:
            continue
        lines.append(f"{name}: eclm after adaptation {pm(e['acc_after'])}, on arrival (cycles from the window) "
                     f"{pm(e['arrival'])} (10-way).")
        for base, r in s["ratios"].items():
            lines.append(f"{name}, eclm vs {LABELS[base]}: after-adaptation gain {pm(r['acc_gain'], 100, 1)} points, "
                         f"on-arrival gain {pm(r['arrival_gain'], 100, 1)} points, traffic x{pm(r['traffic_ratio'], 1, 3)}.")
    lines.append(f"Best baseline after adaptation per epoch budget: {best}.")
    for t in targets:
        ok = t["value"] <= t["target"] if t["op"] == "<=" else t["value"] >= t["target"]
        spread = f" ± {t['spread']:.3g}" if t["spread"] is not None else ""
        lines.append(f"target {t['name']}: {t['value']:.3g}{spread} {t['op']} {t['target']:g} "
                     f"({'met' if ok else 'missed'}).")
    if measured.get("full model") and measured.get("eclm"):
        lines.append(f"Measured adaptation RSS: eclm {measured['eclm']['mean'] / 2**20:.1f} MiB (mean over tiers) vs "
                     f"full model {measured['full model']['mean'] / 2**20:.1f} MiB.")
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
