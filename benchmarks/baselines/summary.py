"""Aggregation of adaptation-benchmark runs: per method and setting, mean and spread over seeds.

Every figure is first reduced within one seed (mean over the devices served in a cycle, then over
cycles), and only then across seeds, so the reported spread is the seed-to-seed variation that a
user re-running the benchmark would see. Ratios eclm/baseline are formed per seed as well.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

# Per-record metrics reduced to one value per seed (mean over devices and cycles).
SCALARS = ("acc_before", "acc_before_dev", "acc_after", "acc_after_dev", "forgetting", "forgetting_dev",
           "bytes_down", "bytes_up", "bytes_total", "seconds_per_batch", "train_seconds", "train_memory", "params",
           "trained_params")
# Per-cycle curves (mean over the devices served in that cycle).
CURVES = ("acc_before", "acc_after", "acc_before_dev", "acc_after_dev")


def mean_std(values: Iterable[float | None]) -> dict[str, float | None]:
    """``{"mean", "std", "n"}`` over the finite values (sample std; 0 for one value; None for none)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}


def _mean(values: Iterable[float | None]) -> float | None:
    return mean_std(values)["mean"]


def seed_summary(records: Sequence[dict], cycles: int, arrival_from: int = 1) -> dict:
    """Reduce one method's records of one seed.

    Returns:
        ``{metric: value}`` for :data:`SCALARS`, ``"first_<m>"`` (cycle 1) and ``"final_<m>"`` (last
        cycle) for the accuracy curves, ``"arrival"`` / ``"arrival_dev"`` (accuracy on arrival over the
        cycles from ``arrival_from`` on), ``"train_memory_max"``, and ``"curves": {m: [per cycle]}``.
    """
    rows = [dict(r, bytes_total=r["bytes_down"] + r["bytes_up"]) for r in records]
    out: dict = {}
    for key in SCALARS:
        # Mean over cycles of the per-cycle device mean, so cycles weigh equally.
        out[key] = _mean(_mean(r[key] for r in rows if r["round"] == c) for c in range(1, cycles + 1))
    out["train_memory_max"] = max((r["train_memory"] for r in rows if r["train_memory"] is not None), default=None)
    out["train_memory_min"] = min((r["train_memory"] for r in rows if r["train_memory"] is not None), default=None)
    out["curves"] = {key: [_mean(r[key] for r in rows if r["round"] == c) for c in range(1, cycles + 1)]
                     for key in CURVES}
    for key in CURVES:
        out[f"first_{key}"] = out["curves"][key][0]
        out[f"final_{key}"] = out["curves"][key][-1]
    for key, curve in (("arrival", "acc_before"), ("arrival_dev", "acc_before_dev")):
        out[key] = _mean(out["curves"][curve][arrival_from - 1:])
    return out


def setting_summary(jobs: Sequence[dict], methods: Sequence[str], cycles: int, arrival_from: int = 1) -> dict:
    """Aggregate the jobs (seeds) of one setting (label skew and epoch budget).

    Args:
        jobs: Per seed ``{"records": {method: [...]}, "server": {method: [...]}}`` of one setting (one
            epoch budget's run of :func:`~benchmarks.baselines.experiment.run_job`).
        methods: Method keys to aggregate.
        cycles: Cycles per job.
        arrival_from: First cycle of the on-arrival window.

    Returns:
        ``{"methods": {method: {metric: mean_std, "curves": {m: [mean_std per cycle]}}},
        "ratios": {baseline: {ratio: mean_std}}, "server": {method: decision counts}, "seeds": n}``.
    """
    per_seed = {m: [seed_summary(job["records"][m], cycles, arrival_from) for job in jobs] for m in methods}
    summary: dict = {"seeds": len(jobs), "methods": {}, "ratios": {}, "server": {}}
    for m in methods:
        seeds = per_seed[m]
        keys = [k for k in seeds[0] if k != "curves"]
        entry = {k: mean_std(s[k] for s in seeds) for k in keys}
        entry["curves"] = {c: [mean_std(s["curves"][c][i] for s in seeds) for i in range(cycles)] for c in CURVES}
        summary["methods"][m] = entry
        summary["server"][m] = _server_counts(job["server"][m] for job in jobs)
    if "eclm" in methods:
        for base in methods:
            if base != "eclm":
                summary["ratios"][base] = _ratios(per_seed["eclm"], per_seed[base])
    return summary


def _ratios(ours: list[dict], theirs: list[dict]) -> dict:
    """Per-seed eclm-vs-baseline figures, then mean and spread over seeds."""
    out: dict[str, list[float | None]] = {k: [] for k in (
        "acc_gain", "acc_gain_dev", "acc_ratio", "acc_ratio_dev", "first_acc_gain", "first_acc_gain_dev",
        "traffic_ratio", "memory_ratio", "latency_ratio", "arrival_gain", "arrival_gain_dev")}
    for a, b in zip(ours, theirs, strict=True):
        out["arrival_gain"].append(_sub(a["arrival"], b["arrival"]))
        out["arrival_gain_dev"].append(_sub(a["arrival_dev"], b["arrival_dev"]))
        out["acc_gain"].append(_sub(a["acc_after"], b["acc_after"]))
        out["acc_gain_dev"].append(_sub(a["acc_after_dev"], b["acc_after_dev"]))
        out["acc_ratio"].append(_div(a["acc_after"], b["acc_after"]))
        out["acc_ratio_dev"].append(_div(a["acc_after_dev"], b["acc_after_dev"]))
        out["first_acc_gain"].append(_sub(a["first_acc_after"], b["first_acc_after"]))
        out["first_acc_gain_dev"].append(_sub(a["first_acc_after_dev"], b["first_acc_after_dev"]))
        out["traffic_ratio"].append(_div(a["bytes_total"], b["bytes_total"]))
        out["memory_ratio"].append(_div(a["train_memory"], b["train_memory"]))
        out["latency_ratio"].append(_div(a["seconds_per_batch"], b["seconds_per_batch"]))
    return {k: mean_std(v) for k, v in out.items()}


def _server_counts(per_job: Iterable[list[dict]]) -> dict:
    counts: dict[str, int] = {}
    seconds = []
    for steps in per_job:
        for step in steps:
            if "decision" in step:
                counts[step["decision"]] = counts.get(step["decision"], 0) + 1
            seconds.append(step["seconds"])
    return {"decisions": counts, "seconds": mean_std(seconds)}


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b
