"""Suite ``robustness``: the validated merge against poisoning devices (issue #12).

Attackers (:mod:`benchmarks.suites._attacks`: sign flip, scaled x10 and x0.1, trained on flipped
labels, colluding identical updates, random noise) are real devices whose uploads are transformed
on the device; they make up 1 of 5 or 3 of 20 devices and attack in every cycle. Each setting runs
through the platform's own cycle (:mod:`benchmarks.suites._robustness_runs`) with the defences on
(the defaults, docs/security.md) beside a clean run from the same pretrained cloud; the clean run
(and in full mode every attack) also runs with the defences off, which gives the merge-time ratio.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks.progress import Progress
from benchmarks.registry import register_suite
from benchmarks.report import Table
from benchmarks.suites._attacks import LABELS
from benchmarks.suites._robustness_runs import RobustnessBenchConfig, run_settings

REFERENCES = ("clean", "absent")  # campaigns without attackers: the references of the drops


@register_suite("robustness", num_threads=1)
def robustness_suite(mode: str, out_dir: Path) -> dict:
    """Poisoning devices (sign flip, x10, x0.1, label flip, collusion, noise; 1 of 5 and 3 of 20) against the
    validated merge with its defences: cloud accuracy vs a clean run, who is excluded, merge time."""
    config = RobustnessBenchConfig.for_mode(mode)
    load_before = _load_average()
    progress = Progress.open(Path(out_dir), "robustness", f"{mode}\0{config.model_dump_json()}")
    runs = run_settings(config, progress)
    result = summarise(runs, config)
    result["campaign_commits"] = _campaign_commits(runs)
    print(f"[robustness] campaigns by the commit they ran at: {result['campaign_commits']['by_commit']}", flush=True)
    result["plots"] = [_plot(result["rows"], Path(out_dir))]
    result["load_average"] = {"before": load_before, "after": _load_average()}
    if result["worst_drop_vs_absent_pts"] is not None:
        print(f"[robustness] worst mean drop vs the attackers' devices absent: "
              f"{result['worst_drop_vs_absent_pts']['mean']:.2f} points (not a target)", flush=True)
    for t in result["targets"]:
        print(f"[robustness] target {t['name']}: {t['value']:.3g} {t['op']} {t['target']:g}", flush=True)
    return result


def _campaign_commits(runs: list[dict]) -> dict:
    """How many campaigns were measured at which commit (:mod:`benchmarks.progress`: a stopped run
    resumes with the campaigns it had finished, on the same code)."""
    return {"campaigns": len(runs), "by_commit": dict(Counter(r.get("progress_commit", "unknown") for r in runs))}


def summarise(runs: list[dict], config: RobustnessBenchConfig) -> dict:
    """Tables, per-(attack, share, defences) rows and the four targets from the runs' records (the
    runs over the device gateway only feed the gateway's table; the runs without the attackers'
    devices, ``absent``, are a second reference for the defended attacks and feed no target)."""
    every, runs = runs, [r for r in runs if not r.get("gateway")]
    rows = []
    for share in dict.fromkeys(r["share"] for r in runs):
        absent = {r["seed"]: r for r in runs if r["share"] == share and r["attack"] == "absent"}
        for defended in (True, False):
            clean = {r["seed"]: r for r in runs
                     if r["share"] == share and r["attack"] == "clean" and r["defended"] == defended}
            for attack in dict.fromkeys(r["attack"] for r in runs):
                group = [r for r in runs if r["share"] == share and r["attack"] == attack and r["defended"] == defended]
                if group:
                    attacked = defended and attack not in REFERENCES
                    rows.append(_row(share, attack, defended, group, clean, absent if attacked else {}))
    on = [r for r in runs if r["defended"] and r["attack"] != "absent"]
    attacked = [r for r in on if r["attack"] not in REFERENCES]
    attack_rows = [row for row in rows if row["defended"] and row["attack"] not in REFERENCES]
    drops = [row["drop_pts"] for row in attack_rows]
    worst = max(drops, key=lambda d: d["mean"]) if drops else {"mean": 0.0, "std": None}
    ratio = _merge_time_ratio(runs)
    targets = [
        _target("robustness.worst_acc_drop_pts", worst["mean"], worst["std"], "<=", 1.0),
        _target("robustness.attacker_excluded_share", *_pooled(attacked, "attacker"), ">=", 0.9),
        _target("robustness.honest_false_exclusion_share", *_pooled(on, "honest"), "<=", 0.05),
        _target("robustness.merge_time_ratio", ratio[0], ratio[1], "<=", 1.5),
    ]
    table = _attack_table(rows, runs, config)
    wall = _merge_time_ratio(runs, "merge_seconds")
    ratio_table = Table("Merge time with and without the defences",
                        ["clock", "merge s (defences on)", "merge s (off)", "ratio on / off", "runs compared"],
                        [["CPU (target)", ratio[2], ratio[3], ratio[0], ratio[4]],
                         ["wall", wall[2], wall[3], wall[0], wall[4]]],
                        notes="Sum of CloudService.merge seconds over the runs that ran both ways (same attack, share, "
                              "seed); ratio = mean over seeds of the per-seed ratio. The target uses the merge's CPU "
                              "seconds (one torch thread): wall seconds on a shared machine measure the other "
                              "processes as much as the merge.")
    tables = [table.to_dict(), ratio_table.to_dict()]
    gateway = _gateway_table(every)
    absent_drops = [row["absent_drop_pts"] for row in attack_rows if row["absent_drop_pts"]["mean"] is not None]
    return {"tables": tables + ([gateway.to_dict()] if gateway else []), "targets": targets, "rows": rows,
            "worst_drop_vs_absent_pts": max(absent_drops, key=lambda d: d["mean"]) if absent_drops else None,
            "runs": every, "config": config.model_dump(mode="json")}


def _attack_table(rows: list[dict], runs: list[dict], config: RobustnessBenchConfig) -> Table:
    """The main table: one row per (attack, share, defences)."""
    return Table(
        "Poisoning devices against the validated merge",
        ["attack", "attackers", "defences", "final cloud val acc", "drop vs clean (pts)",
         "drop vs attackers absent (pts)", "drop under seen environments (pts)", "attacker excluded",
         "honest excluded", "merge CPU s / cycle"],
        [[LABELS[r["attack"]], r["share"], "on" if r["defended"] else "off", _pm(r["final_val_acc"], 3),
          _pm(r["drop_pts"], 1), _pm(r["absent_drop_pts"], 1), _pm(r["seen_drop_pts"], 1), _share(r["attacker"]),
          _share(r["honest"]), _pm(r["merge_s"], 2)] for r in rows],
        notes=(f"{config.cycles} cycles, {config.seeds} seed(s), mean ± std over seeds; every device in every cycle; "
               f"{config.label_skew} classes per device, {config.epochs} local epoch(s), resnet18 channels "
               f"{list(config.channels)}. Drop = clean run's final cloud proxy-validation accuracy minus the attacked "
               "run's (same seed, same defences; positive = worse); one validation image is "
               f"{_image_pts(runs)}. Drop vs attackers absent: the same against the defended clean run in which the "
               "attackers' devices are never served (row 'none, attackers absent'): it does not count what those "
               "devices would have contributed honestly, which the drop vs clean does; an excluded device's "
               "reported environment does not join the merge's validation (docs/security.md); not a target. Drop "
               "under seen environments: the same for the cloud's accuracy on those images clean and under every "
               "environment its devices have reported (norm statistics re-estimated per environment; the merge "
               "outcome's cloud_seen_acc; without the attackers' devices, fewer environments), not a target. Excluded = device-rounds not among the accepted "
               "devices of that cycle's merge (a rejected merge excludes everyone), pooled over seeds. Defences off = "
               "screen disabled and threshold acceptance."))


def _gateway_table(runs: list[dict]) -> Table | None:
    """The clean defended campaign in-process against the same campaign over the device gateway."""
    pairs = [(a, b) for b in runs if b.get("gateway") for a in runs
             if not a.get("gateway") and a["attack"] == "clean" and a["defended"]
             and (a["share"], a["seed"]) == (b["share"], b["seed"])]
    if not pairs:
        return None
    rows = []
    for a, b in pairs:
        cycles = len(a["val_acc"])
        same = a["val_acc"] == b["val_acc"] and a["decisions"] == b["decisions"]
        rows.append([a["share"], a["seed"], round(a["cycle_seconds"] / cycles, 2), round(b["cycle_seconds"] / cycles, 2),
                     round(b["cycle_seconds"] / a["cycle_seconds"], 3), "yes" if same else "NO",
                     round(b["payload_bytes"] / 1e6, 3), round(b["channel_bytes"] / 1e6, 3),
                     round(b["channel_bytes"] / max(b["payload_bytes"], 1), 3)])
    return Table("The device gateway's overhead (every device behind HTTP on 127.0.0.1)",
                 ["devices", "seed", "s / cycle in-process", "s / cycle over the gateway", "ratio",
                  "same accuracies and decisions", "payload MB", "bytes over the channel MB", "channel / payload"],
                 rows, notes="The clean defended campaign again, every device's EdgeService behind a DeviceGateway "
                 "(a thread of this process) and reached through a RemoteDevice: frames of JSON and safetensors "
                 "bytes, validated as the protocol's typed messages (docs/security.md). Payload = the weights the "
                 "cycle counts as traffic (uploads, packages, the selector); the channel also carries the calls, "
                 "the replies' other fields and the data-stream calls. Wall seconds, one run each: on a shared "
                 "machine a single draw.")


def _row(share: str, attack: str, defended: bool, group: list[dict], clean: dict[int, dict],
         absent: dict[int, dict]) -> dict:
    """One table row; drops are paired by seed with the reference runs (``clean``, ``absent``: by seed)."""
    def drops(key: str, reference: dict[int, dict]) -> list[float]:
        pairs = [(reference[r["seed"]].get(key), r.get(key)) for r in group if r["seed"] in reference]
        return [100 * (c - a) for c, a in pairs if c is not None and a is not None]

    return {"share": share, "attack": attack, "defended": defended,
            "final_val_acc": _ms([r["final_val_acc"] for r in group]), "drop_pts": _ms(drops("final_val_acc", clean)),
            "absent_drop_pts": _ms(drops("final_val_acc", absent)), "seen_drop_pts": _ms(drops("final_seen_acc", clean)),
            "attacker": _counts(group, "attacker"), "honest": _counts(group, "honest"),
            "merge_s": _ms([float(np.mean(r["merge_cpu_seconds"])) for r in group])}


def _counts(group: list[dict], kind: str) -> list[int]:
    return [sum(r[f"{kind}_excluded"] for r in group), sum(r[f"{kind}_rounds"] for r in group)]


def _pooled(runs: list[dict], kind: str) -> tuple[float, float | None]:
    """Excluded share pooled over the runs of each seed; mean and std over seeds."""
    per_seed = []
    for seed in sorted({r["seed"] for r in runs}):
        excluded, rounds = _counts([r for r in runs if r["seed"] == seed], kind)
        if rounds:
            per_seed.append(excluded / rounds)
    return (float(np.mean(per_seed)), float(np.std(per_seed)) if len(per_seed) > 1 else None) if per_seed else (0.0, None)


def _merge_time_ratio(runs: list[dict], key: str = "merge_cpu_seconds") -> tuple[float, float | None, float, float, int]:
    """``(mean ratio, std over seeds, seconds on, seconds off, pairs)`` of ``key`` over the runs made both ways."""
    off = {(r["share"], r["attack"], r["seed"]): r for r in runs if not r["defended"]}
    pairs = [(r, off[(r["share"], r["attack"], r["seed"])]) for r in runs
             if r["defended"] and (r["share"], r["attack"], r["seed"]) in off]
    ratios = []
    for seed in sorted({a["seed"] for a, _ in pairs}):
        on_s = sum(sum(a[key]) for a, b in pairs if a["seed"] == seed)
        off_s = sum(sum(b[key]) for a, b in pairs if a["seed"] == seed)
        ratios.append(on_s / off_s)
    on_total = round(sum(sum(a[key]) for a, _ in pairs), 2)
    off_total = round(sum(sum(b[key]) for _, b in pairs), 2)
    return (float(np.mean(ratios)), float(np.std(ratios)) if len(ratios) > 1 else None, on_total, off_total,
            len(pairs))


def _target(name: str, value: float, spread: float | None, op: str, target: float) -> dict:
    return {"name": name, "value": float(value), "op": op, "target": target, "spread": spread}


def _ms(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)) if values else None, "std": float(np.std(values)) if values else None}


def _image_pts(runs: list[dict]) -> str:
    """What one proxy-validation image is worth in accuracy points, from the runs' ``val_samples``."""
    sizes = sorted({r["val_samples"] for r in runs if r.get("val_samples")})
    if not sizes:
        return "of unknown weight"
    return " or ".join(f"{100 / n:.2f} points ({n} images)" for n in sizes)


def _pm(stat: dict, digits: int) -> str:
    if stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _share(counts: list[int]) -> str:
    excluded, rounds = counts
    return f"{excluded}/{rounds} ({excluded / rounds:.0%})" if rounds else "-"


def _plot(rows: list[dict], out_dir: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    on = [r for r in rows if r["defended"]]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(on) + 2), 3.6), constrained_layout=True)
    xs = np.arange(len(on))
    ax.bar(xs - 0.2, [100 * r["attacker"][0] / max(r["attacker"][1], 1) for r in on], 0.4, label="attacker excluded %")
    ax.bar(xs + 0.2, [r["drop_pts"]["mean"] or 0.0 for r in on], 0.4,
           yerr=[r["drop_pts"]["std"] or 0.0 for r in on], label="cloud val drop vs clean (pts)")
    ax.axhline(90, color="grey", lw=0.8, ls="--")
    ax.axhline(1, color="grey", lw=0.8, ls=":")
    ax.set_xticks(xs, [f"{LABELS[r['attack']].split(' (')[0]}\n{r['share']}" for r in on], fontsize=7, rotation=30)
    ax.legend(fontsize=7)
    ax.set_title("Defences on: attackers excluded and accuracy drop", fontsize=9)
    path = out_dir / "robustness_attacks.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
