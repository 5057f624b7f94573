"""Issue #13's figures from a scale run: the protocol and idle-memory tables and the suite's targets.

``raw["protocol"]`` is :func:`benchmarks.suites._scale_protocol.protocol_run`'s record,
``raw["idle"]`` :func:`benchmarks.suites._idle_memory.measure_idle`'s; either may be ``None`` (not
run) or ``{"status": "failed", "reason"}``. A target that could not be measured carries ``value:
None`` and the reason; a missed one keeps its value.
"""

from __future__ import annotations

import statistics

from benchmarks.report import Table
from benchmarks.suites._platform_bench import ScaleBenchConfig

GiB = 2**30


def _ok(part: dict | None) -> bool:
    return part is not None and part.get("status", "ok") == "ok"


def _why(part: dict | None, what: str) -> str:
    return f"{what} not run" if part is None else f"{what} failed: {part.get('reason')}"


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def protocol_figures(protocol: dict) -> dict:
    """Per-cycle ratios of a protocol run: seconds per served device against the compute bound,
    and the merge's share of the cycle; plus whether any device failed."""
    bound = protocol["compute"]["seconds_per_device"]
    per_device = [c["seconds"] / len(c["devices"]) for c in protocol["cycles"]]
    return {"seconds_per_device": per_device,
            "vs_bound": [s / bound for s in per_device] if bound else None,
            "merge_share": [c["durations"].get("merge", 0.0) / c["seconds"] for c in protocol["cycles"]],
            "failures": sum(len(c["failures"]) for c in protocol["cycles"])}


def _target(name: str, op: str, target: float, values: list[float] | float | None, reason: str = "") -> dict:
    if values is None:
        return {"name": name, "value": None, "op": op, "target": target, "spread": None, "reason": reason}
    value, spread = _mean_std(values) if isinstance(values, list) else (values, None)
    return {"name": name, "value": value, "op": op, "target": target, "spread": spread}


def scale_targets(raw: dict) -> list[dict]:
    """The four ``scale.*`` records of issue #13."""
    protocol, idle = raw.get("protocol"), raw.get("idle")
    clean = [r["devices"] for r in raw["runs"] if r.get("status") == "ok" and not r["failures"]]
    figures = protocol_figures(protocol) if _ok(protocol) else None
    if figures is not None and not figures["failures"]:
        clean.append(protocol["registered"])
    slope = idle["fit"]["mib_per_device"] if _ok(idle) else None
    return [
        _target("scale.devices_max", ">=", 1000, float(max(clean, default=0))),
        _target("scale.idle_mib_per_device", "<=", 2, slope,
                _why(idle, "idle-memory runs") if not _ok(idle) else "fewer than two idle counts"),
        _target("scale.seconds_per_device_vs_compute_bound", "<=", 1.15, figures and figures["vs_bound"],
                _why(protocol, "protocol run") if figures is None else "no compute bound measured"),
        _target("scale.merge_share_250", "<=", 0.10, figures and figures["merge_share"],
                _why(protocol, "protocol run")),
    ]


def protocol_table(protocol: dict | None, config: ScaleBenchConfig) -> Table:
    """One row per cycle of the protocol run (a failed or missing run: one row saying so)."""
    columns = ["registered", "served", "cycle", "observe (s)", "cycle (s)", "s / served device", "x compute bound",
               "adapt (s)", "merge (s)", "merge share", "log (s)", "device failures", "merge"]
    rows = []
    if _ok(protocol):
        f = protocol_figures(protocol)
        for i, c in enumerate(protocol["cycles"]):
            d = c["durations"]
            rows.append([protocol["registered"], protocol["served"], i + 1, round(c["observe_seconds"], 1),
                         round(c["seconds"], 1), round(f["seconds_per_device"][i], 3),
                         round(f["vs_bound"][i], 2) if f["vs_bound"] else None, round(d.get("adapt", 0.0), 1),
                         round(d.get("merge", 0.0), 2), round(f["merge_share"][i], 3), round(d.get("log", 0.0), 2),
                         len(c["failures"]), c["decision"]])
        compute = protocol["compute"]
        extra = (f" Compute bound: plain-process adapt {_fmt(compute['plain_seconds'])} s over "
                 f"{len(compute['plain_seconds'])} device(s) / {compute['cores']} cores = "
                 f"{compute['seconds_per_device'] or float('nan'):.3f} s per device. Peak tree PSS "
                 f"{(protocol['peak_pss'] or 0) / GiB:.2f} GiB; start {protocol['start_seconds']:.1f} s.")
    else:
        rows.append([config.registered, config.served, None, None, None, None, None, None, None, None, None, None,
                     _why(protocol, "protocol run")])
        extra = ""
    return Table(
        "Protocol run: registered devices, a slice served per cycle (pooled)", columns, rows,
        notes=(f"{config.pool_size} pools; every cycle all registered devices take a data step (observe, timed "
               "apart), then a new slice of `served` devices runs Platform.run_cycle (cycle = its wall time). "
               "x compute bound = (cycle s / served devices) / (the same adaptation in a plain process / cores). "
               "merge share = merge s / cycle s (target scale.merge_share_250 is defined on 250 served devices; "
               "quick mode serves fewer)." + extra),
    )


def idle_table(idle: dict | None) -> Table:
    """Whole-tree PSS against resting devices, with the fitted slope and flatness exponent."""
    rows = []
    if _ok(idle):
        fit = idle["fit"]
        rows = [[r["idle"], round(r["pss_mib"], 0), round(r["observe_seconds"], 1), r["failures"]] for r in idle["runs"]]
        notes = (f"Slope {_r(fit['mib_per_device'], 3)} MiB per idle device (least squares), fixed "
                 f"{_r(fit['fixed_mib'], 0)} MiB, flatness exponent {_r(fit['exponent'], 2)} (log-log slope of "
                 "the increase over 0 idle devices; None = no increase of 1 MiB or more). ")
    else:
        rows.append([None, None, None, _why(idle, "idle-memory runs")])
        notes = ""
    return Table(
        "Memory of resting virtual devices (one pool, whole process tree)",
        ["idle devices", "tree PSS (MiB)", "observe (s)", "device failures"], rows,
        notes=notes + ("One pool hosts 1 served + n resting devices; all take two data steps (advance, drift, "
                       "profile), device 0 is served once; resting devices beyond ray.pool_resident_devices live "
                       "in their device stores. PSS summed over driver, Ray daemons, cloud actor and pool "
                       "(median of 3 readings). Other agents share this machine, so readings carry their noise."),
    )


def _r(v: float | None, digits: int) -> float | None:
    return None if v is None else round(v, digits)


def _fmt(values: list[float]) -> str:
    if not values:
        return "n/a"
    mean, std = _mean_std(values)
    return f"{mean:.2f} ± {std or 0.0:.2f}"
