"""The adaptation suite's targets (issue #11), computed per seed and then over seeds.

Every figure is formed within one seed first (pooling that seed's label skews and, where a figure
does not name a budget, both epoch budgets), so the spread is the seed-to-seed variation:

* traffic: eclm's bytes per served device and cycle (down + up) over a baseline's;
* on-arrival gain: eclm's accuracy on arrival (the model a device holds or receives before it
  adapts; 10-way) minus the baseline's, in points, over the cycles from ``arrival_from`` on;
* after-adaptation gain: eclm's accuracy after adaptation minus the best baseline's (the baseline
  with the best mean over seeds at that budget), in points;
* memory: eclm's measured training memory on the weakest tier over full-model training (the
  probe's adaptation RSS, one measurement per seed).
"""

from __future__ import annotations

from collections.abc import Sequence

from benchmarks.baselines.summary import mean_std, seed_summary

BASELINES = ("na", "la", "fedavg", "fedavg_codec", "heterofl", "heterofl_codec")
TARGETS = (
    ("adaptation.traffic_vs_fedavg_published", "<=", 0.2),
    ("adaptation.traffic_vs_fedavg_codec", "<=", 0.5),
    ("adaptation.traffic_vs_heterofl_codec", "<=", 0.25),
    ("adaptation.memory_weakest_vs_full", "<=", 0.33),
    ("adaptation.arrival_gain_vs_fedavg_pts", ">=", 10.0),
    ("adaptation.arrival_gain_vs_heterofl_pts", ">=", 10.0),
    ("adaptation.after_gain_vs_best_3ep_pts", ">=", -0.5),
    ("adaptation.after_gain_vs_best_1ep_pts", ">=", 3.0),
)


def per_seed_figures(jobs: Sequence[dict], cycles: int, arrival_from: int) -> dict[int, dict[str, dict]]:
    """``{seed: {epochs: {method: seed summary with "arrival"}}}``, label skews pooled by averaging."""
    out: dict[int, dict[str, dict]] = {}
    for job in jobs:
        for epochs, run in job["runs"].items():
            for method, records in run["records"].items():
                s = seed_summary(records, cycles, arrival_from)
                out.setdefault(job["seed"], {}).setdefault(epochs, {}).setdefault(method, []).append(s)
    return {seed: {e: {m: _pool(v) for m, v in by_m.items()} for e, by_m in by_e.items()} for seed, by_e in out.items()}


def _pool(summaries: list[dict]) -> dict:
    keys = ("bytes_total", "acc_after", "acc_before", "arrival")
    return {k: _avg([s.get(k) for s in summaries]) for k in keys}


def _avg(values) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def target_records(jobs: Sequence[dict], cycles: int, arrival_from: int, memory: dict[int, float] | None) -> list[dict]:
    """The suite's ``targets`` records (value = mean over seeds, spread = std; ``None`` spread with
    one seed).

    Args:
        jobs: :func:`~benchmarks.baselines.experiment.run_job` results.
        cycles: Cycles per run.
        arrival_from: First cycle of the on-arrival window.
        memory: Per seed, eclm's weakest-tier adaptation RSS over the full model's (``None``: not measured).
    """
    figs = per_seed_figures(jobs, cycles, arrival_from)
    values = {name: [] for name, _, _ in TARGETS}
    best = {e: _best_baseline(figs, e) for e in {e for f in figs.values() for e in f}}
    for seed, by_e in figs.items():
        traffic = {b: _avg([_div(r["eclm"]["bytes_total"], r[b]["bytes_total"]) for r in by_e.values() if b in r])
                   for b in ("fedavg", "fedavg_codec", "heterofl_codec")}
        arrival = {b: _avg([_pts(r["eclm"]["arrival"], r[b]["arrival"]) for r in by_e.values() if b in r])
                   for b in ("fedavg", "heterofl")}
        values["adaptation.traffic_vs_fedavg_published"].append(traffic["fedavg"])
        values["adaptation.traffic_vs_fedavg_codec"].append(traffic["fedavg_codec"])
        values["adaptation.traffic_vs_heterofl_codec"].append(traffic["heterofl_codec"])
        values["adaptation.arrival_gain_vs_fedavg_pts"].append(arrival["fedavg"])
        values["adaptation.arrival_gain_vs_heterofl_pts"].append(arrival["heterofl"])
        for e, name in (("3", "adaptation.after_gain_vs_best_3ep_pts"), ("1", "adaptation.after_gain_vs_best_1ep_pts")):
            if e in by_e and best.get(e):
                values[name].append(_pts(by_e[e]["eclm"]["acc_after"], by_e[e][best[e]]["acc_after"]))
        if memory and seed in memory:
            values["adaptation.memory_weakest_vs_full"].append(memory[seed])
    records = []
    for name, op, target in TARGETS:
        stat = mean_std(values[name])
        if stat["mean"] is None:
            continue
        records.append({"name": name, "value": stat["mean"], "op": op, "target": target,
                        "spread": stat["std"] if stat["n"] > 1 else None})
    return records


def _best_baseline(figs: dict[int, dict[str, dict]], epochs: str) -> str | None:
    """The baseline with the best mean accuracy after adaptation over seeds at ``epochs``."""
    means = {}
    for b in BASELINES:
        vals = [by_e[epochs][b]["acc_after"] for by_e in figs.values() if epochs in by_e and b in by_e[epochs]]
        if vals and all(v is not None for v in vals):
            means[b] = sum(vals) / len(vals)
    return max(means, key=means.get) if means else None


def best_baselines(jobs: Sequence[dict], cycles: int, arrival_from: int) -> dict[str, str | None]:
    """Per epoch budget, the baseline the after-adaptation target compares with."""
    figs = per_seed_figures(jobs, cycles, arrival_from)
    return {e: _best_baseline(figs, e) for e in sorted({e for f in figs.values() for e in f}, key=int)}


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _pts(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else 100.0 * (a - b)


__all__ = ["TARGETS", "best_baselines", "per_seed_figures", "target_records"]
