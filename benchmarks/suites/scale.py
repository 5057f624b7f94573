"""Suite ``scale``: cycle time and whole-process-tree memory against the number of devices.

Both placement modes run on one machine with real Ray: one ``EdgeActor`` process per device, and
pooled mode (``ray.edge_pool_size`` worker actors hosting all devices, state kept between
cycles). The merge is configured to accept its first candidate (tolerances 1.0) so the figures
show how orchestration, adaptation and logging grow with devices; the validated merge's own
growth when it rejects is measured by the ``platform_overhead`` suite. Then issue #13's protocol:
the memory of resting virtual devices, and a pooled campaign with many registered devices of
which a slice is served per cycle, with the targets ``scale.*`` (docs/scaling.md).
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from benchmarks.registry import register_suite
from benchmarks.report import Table
from benchmarks.suites._platform_bench import ScaleBenchConfig
from benchmarks.suites._scale_measure import GiB, measure_all
from benchmarks.suites._scale_targets import idle_table, protocol_table, scale_targets

MODE_LABELS = {"actor": "one actor per device", "pooled": "pooled"}


@register_suite("scale", num_threads=1)
def scale_suite(mode: str, out_dir: Path) -> dict:
    """Scale on one machine: cycle time and process-tree memory for growing device counts, actor vs pooled mode."""
    result = run_scale_benchmark(ScaleBenchConfig.for_mode(mode), out_dir)
    for line in result["summary"]:  # the headline figures, also on the console
        print(f"[scale] {line}", flush=True)
    return result


def run_scale_benchmark(config: ScaleBenchConfig, out_dir: Path | None = None, raw: dict | None = None) -> dict:
    """Run (or take recorded ``raw`` :func:`run_scale` output) and build the suite result.

    Returns:
        ``{"tables", "plots", "summary", "config", "raw", "growth", "targets"}``.
    """
    if raw is None:
        with tempfile.TemporaryDirectory(prefix="eclm-scale-") as tmp:
            raw = measure_all(config, Path(tmp))
    growth = {m: growth_rates([r for r in raw["runs"] if r["mode"] == m and r.get("status") == "ok"])
              for m in config.modes}
    plots = []
    if out_dir is not None and any(r.get("status") == "ok" for r in raw["runs"]):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        _plot(raw["runs"], Path(out_dir) / "scale_cost_vs_devices.png")
        plots.append("scale_cost_vs_devices.png")
    tables = [_runs_table(raw, config), _growth_table(growth), idle_table(raw.get("idle")),
              protocol_table(raw.get("protocol"), config)]
    targets = scale_targets(raw)
    return {"tables": [t.to_dict() for t in tables], "plots": plots, "summary": _summary(growth, raw, targets),
            "config": config.model_dump(mode="json"), "raw": raw, "growth": growth, "targets": targets}


def growth_rates(runs: list[dict]) -> dict:
    """Least-squares slope and intercept of cycle seconds, start seconds and PSS against devices.

    Returns:
        ``{metric: {"per_device", "fixed"}}`` (``None`` entries with fewer than two runs), plus
        ``"exponent"``: the log-log slope of cycle time between the smallest and largest run.
    """
    out: dict = {}
    xs = [r["devices"] for r in runs]
    metrics = {"cycle_seconds": lambda r: statistics.fmean(r["cycle_seconds"]),
               "start_seconds": lambda r: r["start_seconds"],
               "pss_mib": lambda r: (r["peak_pss"] or r["peak_rss"]) / 2**20}
    for name, key in metrics.items():
        ys = [key(r) for r in runs]
        if len(set(xs)) < 2:
            out[name] = {"per_device": None, "fixed": None}
            continue
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
        out[name] = {"per_device": slope, "fixed": my - slope * mx}
    if len(runs) >= 2:
        import math

        a, b = runs[0], runs[-1]
        ta, tb = statistics.fmean(a["cycle_seconds"]), statistics.fmean(b["cycle_seconds"])
        out["exponent"] = math.log(tb / ta) / math.log(b["devices"] / a["devices"]) if ta > 0 and tb > 0 else None
    else:
        out["exponent"] = None
    return out


def _stage(r: dict, stage: str) -> float:
    return statistics.fmean(c.get(stage, 0.0) for c in r["cycles"])


def _runs_table(raw: dict, config: ScaleBenchConfig) -> Table:
    rows = []
    for r in raw["runs"]:
        label = MODE_LABELS[r["mode"]] + (f" ({config.pool_size} workers)" if r["mode"] == "pooled" else "")
        if r.get("status") != "ok":
            rows.append([label, r["devices"], None, None, None, None, None, None, None, None, r.get("status"),
                         r.get("reason")])
            continue
        cyc = r["cycle_seconds"]
        rows.append([label, r["devices"], round(r["start_seconds"], 1),
                     f"{statistics.fmean(cyc):.2f} ± {statistics.stdev(cyc) if len(cyc) > 1 else 0.0:.2f}",
                     round(_stage(r, "adapt"), 2), round(_stage(r, "merge"), 2), round(_stage(r, "log"), 2),
                     round(r["peak_rss"] / GiB, 2), round((r["peak_pss"] or 0) / GiB, 2), r["processes"], "ok",
                     f"{r['failures']} device failures; merges {sorted(set(r['decisions']))}"])
    base = raw["baseline"]
    return Table(
        "Cycle time and process-tree memory by device count",
        ["mode", "devices", "start (s)", "cycle (s)", "adapt (s)", "merge (s)", "log (s)", "peak RSS sum (GiB)",
         "peak PSS (GiB)", "processes", "status", "notes"],
        rows,
        notes=("Real local Ray on this machine, MLflow on a temporary SQLite store; narrow ResNet-18 (16-128 "
               "channels, 4 modules/layer) on digits, 2 classes per device, 3 local epochs; cycle = "
               "Platform.run_cycle over every device (mean ± std over the timed cycles). start: Platform.start "
               "(actor processes import torch and build their data). Memory of the driver and every descendant "
               "(Ray daemons, actors) sampled every 0.5 s (RSS) / 2 s (PSS): the RSS sum counts shared library "
               "pages once per process (upper bound), PSS splits them (real use). Idle baseline after Ray start: "
               f"RSS {base['rss'] / GiB:.2f} GiB, PSS {(base['pss'] or 0) / GiB:.2f} GiB. A run is skipped when its "
               f"PSS, extrapolated from the previous runs of its mode, passes {config.memory_limit_gib:g} GiB, or "
               f"its duration would pass the suite's {config.time_budget_s:.0f} s budget."),
    )


def _growth_table(growth: dict) -> Table:
    rows = []
    for mode, g in growth.items():
        rows.append([MODE_LABELS[mode], _r(g["cycle_seconds"]["per_device"], 3), _r(g["cycle_seconds"]["fixed"], 2),
                     _r(g["start_seconds"]["per_device"], 2), _r(g["pss_mib"]["per_device"], 1),
                     _r(g["pss_mib"]["fixed"], 0), _r(g.get("exponent"), 2)])
    return Table(
        "How cost grows with devices (least-squares fit over the runs)",
        ["mode", "cycle s / device", "cycle fixed s", "start s / device", "PSS MiB / device", "PSS fixed MiB",
         "cycle-time exponent"],
        rows,
        notes=("Linear fit y = fixed + per_device x devices over the completed runs of a mode; exponent = "
               "log(cycle time ratio) / log(device ratio) between the smallest and largest run (1 = linear)."),
    )


def _r(v: float | None, digits: int) -> float | None:
    return None if v is None else round(v, digits)


def _summary(growth: dict, raw: dict, targets: list[dict]) -> list[str]:
    lines = [f"{t['name']} = {'n/a (' + t['reason'] + ')' if t['value'] is None else format(t['value'], '.3g')} "
             f"(target {t['op']} {t['target']:g})" for t in targets]
    for mode, g in growth.items():
        c, m = g["cycle_seconds"], g["pss_mib"]
        if c["per_device"] is None:
            continue
        lines.append(f"{MODE_LABELS[mode]}: cycle time grows {c['per_device']:.3f} s/device "
                     f"(exponent {g['exponent']:.2f}), start-up {g['start_seconds']['per_device']:.2f} s/device, "
                     f"memory {m['per_device']:.0f} MiB/device (PSS).")
    lines.append("The ECLM paper (arXiv 2311.11083) quotes no scale figures for the platform, so there is no published reference here.")
    skipped = [f"{r['mode']} x {r['devices']}: {r['reason']}" for r in raw["runs"] if r.get("status") != "ok"]
    if skipped:
        lines.append("Not run: " + "; ".join(skipped) + ".")
    return lines


def _plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), constrained_layout=True)
    for mode in MODE_LABELS:
        ok = [r for r in runs if r["mode"] == mode and r.get("status") == "ok"]
        if not ok:
            continue
        xs = [r["devices"] for r in ok]
        axes[0].plot(xs, [statistics.fmean(r["cycle_seconds"]) for r in ok], marker="o", label=MODE_LABELS[mode])
        axes[1].plot(xs, [(r["peak_pss"] or r["peak_rss"]) / GiB for r in ok], marker="o", label=MODE_LABELS[mode])
    axes[0].set_ylabel("seconds per cycle")
    axes[1].set_ylabel("peak process-tree PSS (GiB)")
    for ax in axes:
        ax.set_xlabel("devices")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
