"""Result tables and headline lines of the adaptation benchmark."""

from __future__ import annotations

from typing import get_args

from benchmarks.baselines import reference as ref
from benchmarks.baselines.config import AdaptationBenchConfig
from benchmarks.report import Table
from eclm.campaign.messages import Delivery

MiB = 2**20


def pm(stat: dict | None, scale: float = 1.0, digits: int = 3) -> str | None:
    """``"mean ± std"`` of a :func:`~benchmarks.baselines.summary.mean_std` result (None if empty)."""
    if not stat or stat.get("mean") is None:
        return None
    return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"


def accuracy_table(name: str, summary: dict, labels: dict[str, str], cfg: AdaptationBenchConfig) -> Table:
    rows = []
    for m, e in summary["methods"].items():
        rows.append([labels[m], pm(e["acc_after"]), pm(e["acc_after_dev"]), pm(e["acc_before"]), pm(e["arrival"]),
                     pm(e["arrival_dev"]), pm(e["first_acc_after"]), pm(e["forgetting"]), pm(e["forgetting_dev"])])
    return Table(
        f"Adaptation quality, {name}",
        ["method", "acc after (10-way)", "acc after (own classes)", "acc on arrival (10-way)",
         f"on arrival, cycles {cfg.arrival_from}-{cfg.cycles} (10-way)", f"on arrival, cycles {cfg.arrival_from}-"
         f"{cfg.cycles} (own)", "cycle-1 acc after (10-way)", "forgetting (10-way)", "forgetting (own)"],
        rows,
        notes=(f"Mean ± std over {summary['seeds']} seeds of the per-seed mean over cycles of the mean over the "
               f"{cfg.sampled} devices served per cycle ({cfg.num_devices} devices, {cfg.cycles} cycles, a new "
               "corruption environment per cycle, 50% of local data replaced per cycle). 'acc after': the "
               "device's model after this cycle's local adaptation, on held-out images of its classes under "
               "the current environment; 'on arrival': the model the device holds or receives, before adapting "
               "(after the delivery and the norm statistics it re-estimates on its unlabelled local data). "
               "10-way = argmax over all classes (what the platform logs); own = argmax over the device's "
               "classes. Forgetting = accuracy on the previous environment at the end of the device's previous "
               "cycle minus at the end of this one (positive = forgot)."),
    )


def cycle_table(name: str, summary: dict, labels: dict[str, str], cfg: AdaptationBenchConfig) -> Table:
    """Per cycle, accuracy on arrival / after adaptation (10-way, %, mean over seeds)."""
    rows = []
    for m, e in summary["methods"].items():
        before, after = e["curves"]["acc_before"], e["curves"]["acc_after"]
        rows.append([labels[m]] + [_pair(b, a) for b, a in zip(before, after, strict=True)])
    return Table(
        f"Accuracy per cycle, on arrival / after adaptation, {name}",
        ["method"] + [f"cycle {c}" for c in range(1, cfg.cycles + 1)],
        rows,
        notes=("10-way accuracy in %, mean over seeds of the mean over the devices served in that cycle: on "
               "arrival (the model a device holds or receives, before adapting) / after this cycle's adaptation."),
    )


def _pair(before: dict, after: dict) -> str | None:
    if before["mean"] is None or after["mean"] is None:
        return None
    return f"{100 * before['mean']:.1f} / {100 * after['mean']:.1f}"


def cost_table(settings: dict[str, dict], labels: dict[str, str], measured: dict[str, dict] | None) -> Table:
    rows = []
    for name, summary in settings.items():
        for m, e in summary["methods"].items():
            mem = (measured or {}).get(m)
            rows.append([name, labels[m], pm(e["bytes_total"], 1 / 1024, 1), pm(e["bytes_down"], 1 / 1024, 1),
                         pm(e["bytes_up"], 1 / 1024, 1), pm(e["params"], 1e-3, 1), pm(e["trained_params"], 1e-3, 1),
                         pm(e["train_memory"], 1 / MiB, 2), None if not mem else round(mem["mean"] / MiB, 1),
                         pm(e["train_seconds"], 1, 3), pm(e["seconds_per_batch"], 1e3, 1)])
    return Table(
        "Cost per served device and cycle",
        ["setting", "method", "KiB total", "KiB down", "KiB up", "params (k)", "trained params (k)",
         "train memory, modelled (MiB)", "measured adaptation RSS (MiB)", "train seconds", "ms / batch"],
        rows,
        notes=("Traffic: safetensors payload bytes per served device per cycle, as the platform's cycle counts "
               "them (CycleResult.bytes_down/bytes_up; the selector counts once per device, when it is sent). "
               "eclm (platform defaults): the derived sub-model in float16 the first time, else only the modules "
               "and classifier rows that changed since the version the device holds, int8 per output channel "
               "(after a spec change, plus the modules new to it in float16); up: only what it trained (its "
               "modules, its classes' rows), int8 "
               "with error feedback. FedAvg/HeteroFL as published: the full float32 slice both ways every cycle; "
               "'+ codec': int8 deltas against the version the device holds down (float16 when it holds none), "
               "int8 deltas of every weight up. eclm, '+ codec', NA and LA payloads travel losslessly compressed "
               "(byte planes + DEFLATE, docs/method.md), the published baselines' as plain safetensors. "
               "NA/LA: the derived sub-model once, never an upload. Modelled "
               "training memory: eclm.modules.trainable.TrainingMemory (4 B per held parameter, 16 B per trained "
               "one, 2 x kept activations x 24-sample batch) of each device's sub-model and plan. Measured: extra "
               "peak RSS of one adaptation run per method and tier over the process's torch baseline "
               "(benchmarks/baselines/memory_probe.py; mean over the method's tier representatives). Train "
               "seconds: EdgeService.adapt's fine-tuning time per device and cycle, 1 torch thread, two benchmark "
               "workers sharing the machine with other work (see the load average)."),
    )


def ratio_table(settings: dict[str, dict], labels: dict[str, str], measured: dict[str, dict] | None) -> Table:
    rows = []
    for name, summary in settings.items():
        for base, r in summary["ratios"].items():
            mem = None
            if measured and measured.get("eclm") and measured.get(base):
                mem = round(measured["eclm"]["mean"] / measured[base]["mean"], 3)
            rows.append([name, labels[base], pm(r["acc_gain"], 100, 1), pm(r["acc_gain_dev"], 100, 1),
                         pm(r["arrival_gain"], 100, 1), pm(r["arrival_gain_dev"], 100, 1),
                         pm(r["traffic_ratio"], 1, 3), pm(r["memory_ratio"], 1, 3), mem, pm(r["latency_ratio"], 1, 2)])
    return Table(
        "eclm / baseline",
        ["setting", "baseline", "after-adaptation gain, points (10-way)", "after gain (own)",
         "on-arrival gain, points, late cycles (10-way)", "on-arrival gain (own)", "traffic ratio",
         "memory ratio (modelled)", "memory ratio (measured)", "latency ratio"],
        rows,
        notes=("Gains and ratios are formed per seed and then averaged (± std over seeds). Gain = eclm minus "
               "baseline accuracy, in percentage points: after adaptation (mean over cycles) and on arrival (mean "
               "over the late cycles, from AdaptationBenchConfig.arrival_from on). Traffic/memory/latency ratio = "
               "eclm / baseline: below 1 means eclm needs less. NA and LA only download once, so their traffic "
               "ratios mostly say how much eclm pays for staying in contact."),
    )


def tier_table(jobs: list[dict], probe: list[dict], labels: dict[str, str], cfg: AdaptationBenchConfig) -> Table:
    """Per method and tier: sub-model, trained parameters, modelled and measured training memory."""
    epochs = str(max(cfg.epoch_budgets))
    measured = {r["key"]: r for r in probe if "error" not in r}
    full = measured.get("full model")
    rows = []
    for method in cfg.methods:
        records = [r for j in jobs[:1] for r in j["runs"][epochs]["records"][method]]
        if not records or records[0]["train_memory"] is None:
            continue
        for tier in sorted({(r["tier"], r.get("memory_mb")) for r in records}, key=lambda t: (t[1] or 1e9, t[0])):
            mine = [r for r in records if (r["tier"], r.get("memory_mb")) == tier]
            key = f"{method}@{tier[0]:g}" + (f"/{tier[1]:g}MB" if tier[1] else "")
            rss = measured.get(key, {}).get("adaptation_rss")
            rows.append([labels[method], f"{tier[0]:g} params" + (f", {tier[1]:g} MB" if tier[1] else ""),
                         round(_avg(r["params"] for r in mine) / 1e3, 1),
                         round(_avg(r["trained_params"] or 0 for r in mine) / 1e3, 1),
                         round(_avg(r["train_memory"] for r in mine) / MiB, 2),
                         None if rss is None else round(rss / MiB, 2),
                         None if rss is None or not full else round(rss / full["adaptation_rss"], 3)])
    return Table(
        "Training memory per tier",
        ["method", "tier", "params (k)", "trained params (k)", "modelled (MiB)", "measured RSS (MiB)",
         "measured / full-model training"],
        rows,
        notes=(f"First job, {epochs} epochs, all cycles (modelled) and the last cycle's sub-model and plan "
               "(measured: extra peak RSS of one adaptation over the process's torch baseline, see "
               "benchmarks/baselines/memory_probe.py). Full-model training: the whole cloud model trained densely "
               f"({'%.1f MiB measured' % (full['adaptation_rss'] / MiB) if full else 'not measured'}). A tier with "
               "memory cannot train the full model: dense training of it needs about 31 MiB (modelled)."),
    )


def _avg(values) -> float:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else 0.0


def reference_table(two: dict | None, labels: dict[str, str], full_train_memory: float | None = None,
                    probe: list[dict] | None = None) -> Table:
    """Paper figures beside ours (``two``: our 2-classes, 3-epochs setting, if it ran);
    ``full_train_memory`` (analytic bytes of full-model training) and ``probe`` (memory-probe
    records) supply the "versus full-model training" rows."""
    rows = []
    for m, paper in ref.PAPER_ACCURACY.items():
        ours = two["methods"].get(m) if two else None
        rows.append([labels.get(m, "AdaptiveNet" if m == "adaptivenet" else m), paper,
                     pm(ours["first_acc_after"], 100, 1) if ours else None,
                     pm(ours["first_acc_after_dev"], 100, 1) if ours else None,
                     pm(ours["acc_before"], 100, 1) if ours else None])
    for base, factor in ref.PAPER_TRAFFIC_REDUCTION.items():
        r = two["ratios"].get(base) if two else None
        ours = None if not r or r["traffic_ratio"]["mean"] in (None, 0) else round(1 / r["traffic_ratio"]["mean"], 2)
        rows.append([f"traffic: x less than {labels.get(base, base)}", factor, ours, None, None])
    eclm = two["methods"].get("eclm") if two else None
    analytic = None
    if eclm and full_train_memory and eclm["train_memory_min"]["mean"]:
        analytic = round(full_train_memory / eclm["train_memory_min"]["mean"], 2)
    measured_mem = measured_lat = None
    full = next((r for r in probe or [] if r["key"] == "full model" and "error" not in r), None)
    ours = [r for r in probe or [] if r["key"].startswith("eclm@") and "error" not in r and "weakest" not in r["key"]]
    if full and ours:
        measured_mem = round(full["adaptation_rss"] / max(min(r["adaptation_rss"] for r in ours), 1), 2)
        measured_lat = round(full["seconds_per_batch"] / min(r["seconds_per_batch"] for r in ours), 2)
    rows.append(["memory: x less than full-model training (up to)", ref.PAPER_MEMORY_REDUCTION_VS_FULL, analytic,
                 measured_mem, None])
    rows.append(["latency: x less than full-model training (up to)", ref.PAPER_LATENCY_REDUCTION_VS_FULL,
                 measured_lat, None, None])
    return Table(
        "Published ECLM numbers next to ours (2 classes per device, 3 epochs)",
        ["quantity", "paper", "ours, cycle 1 (10-way, %)", "ours, cycle 1 (own classes, %)",
         "ours, on arrival (10-way, %)"],
        rows,
        notes=(f"Paper: {ref.PAPER_SETTING}; CIFAR-100/VGG16 quotes NA {ref.PAPER_CIFAR100['na']} vs "
               f"{ref.PAPER_CIFAR100['eclm']}; memory up to {ref.PAPER_MEMORY_REDUCTION_VS_FULL}x and latency up to "
               f"{ref.PAPER_LATENCY_REDUCTION_VS_FULL}x below full-model training; traffic best case "
               f"{ref.PAPER_TRAFFIC_BEST}x. Ours: accuracy after the first adaptation cycle (mean ± std over seeds); "
               "for FedAvg/HeteroFL that is the device's fine-tuned copy of the global model. The paper's FedAvg and "
               "HeteroFL sit at NA level, which suggests it scores the aggregated global model: compare those with "
               "our 'on arrival' column (the model a device receives, mean over cycles, before adapting). "
               "Not comparable in absolute terms: digits upsampled to 32x32 instead of CIFAR, a narrow ResNet-18 "
               "trained from scratch on the 30% proxy share instead of a pretrained one, corruption drift, and "
               "AdaptiveNet is not implemented. Compare the ordering of the methods and the traffic factors. "
               "Memory rows: analytic (platform estimate, smallest eclm sub-model vs the full model) in the 10-way "
               "column, measured adaptation RSS (probe) in the other; latency row: probe ms/batch, full model vs "
               "the fastest eclm sub-model. Our sub-models are capped at 30-80% of a small model's parameters and "
               "activation memory at 32x32 is dominated by the undecomposed stem, so large factors cannot occur."),
    )


def server_table(settings: dict[str, dict]) -> Table:
    rows = []
    for skew, summary in settings.items():
        for m in ("eclm", "fedavg", "fedavg_codec", "heterofl", "heterofl_codec"):
            s = summary["server"].get(m)
            if s is None:
                continue
            d = s["decisions"]
            rows.append([skew, m, d.get("accept", 0) if m == "eclm" else None,
                         d.get("partial", 0) if m == "eclm" else None, d.get("reject", 0) if m == "eclm" else None,
                         pm(s["seconds"], 1, 2)])
    return Table(
        "Server step per cycle",
        ["setting", "method", "merges accepted", "partially accepted", "rejected", "seconds per server step"],
        rows,
        notes=("eclm: CloudService.merge with the platform's default merge settings (delta uploads re-based on "
               "the current cloud, claims and robust screen, importance x samples weighting, server step 0.5 "
               "halved up to 3 times while the candidate fails the paired test on the proxy validation set clean "
               "and under every environment admitted devices reported, one epoch of repair on proxy images under "
               "those environments for what the admitted uploads carried, then exclusion of harmful updates). A rejected "
               "merge leaves the cloud model unchanged. FedAvg/HeteroFL: plain sample-weighted averaging, no "
               "validation. Seconds: "
               "the cycle's merge phase (server step, snapshot of a new version, the cloud's re-validation). "
               "Counts over all seeds and cycles."),
    )


def delivery_table(jobs: list[dict], labels: dict[str, str]) -> Table:
    """What each method's downloads carried (:data:`eclm.campaign.messages.Delivery`): per method and
    kind, the share of served device-cycles and the KiB per such download, pooled over every job
    (seed and label skew) and epoch budget."""
    kinds: dict[str, dict[str, list[int]]] = {}
    for job in jobs:
        for run in job["runs"].values():
            for method, records in run["records"].items():
                for r in records:
                    kinds.setdefault(method, {}).setdefault(r.get("delivery") or "not stated", []).append(r["bytes_down"])
    order = [*get_args(Delivery), "not stated"]
    rows = []
    for method, by_kind in kinds.items():
        served = sum(len(v) for v in by_kind.values())
        for kind in sorted(by_kind, key=lambda k: order.index(k) if k in order else len(order)):
            sizes = by_kind[kind]
            rows.append([labels.get(method, method), kind, len(sizes), round(len(sizes) / served, 3),
                         round(sum(sizes) / len(sizes) / 1024, 1), round(sum(sizes) / served / 1024, 1)])
    return Table(
        "Downloads by kind", ["method", "delivery", "served device-cycles", "share", "KiB per download",
                              "KiB per served device-cycle"], rows,
        notes=("What each served device's package carried and why (SubModelPackage.delivery): kept = nothing (it "
               "holds this version and spec), delta = the change since the version it holds, respec = another "
               "spec (kept modules' change, new modules whole); whole sub-models: first = its first service, "
               "refresh = fresh weights after a rejected upload, expired = its held version is no longer kept "
               "(merge.keep_versions), new_spec = a baseline's changed width (no respec), weights = the method "
               "ships whole models every time (FedAvg/HeteroFL as published). KiB include the selector where it "
               "was sent. Pooled over seeds, label skews and epoch budgets."),
    )
