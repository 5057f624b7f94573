"""Part 2 of suite ``split``: GPSL global sampling vs fixed local batches, through the platform.

Severe non-IID: every device holds two classes (``data.classes_per_device: 2``) and local sets of
uneven size around an equal share of the data. Each method is one platform split round
(:func:`eclm.campaign.split_round.run_split_round`, devices in split mode, cut after the stem, the
sampler from ``split.sampler``) of the same number of epochs; test accuracy of the round's
aggregated model on the held-out images of every class, mean and std over seeds (partition, model
init, sampling). Centralised: one device holding every training image, the same round.

The Ray part runs the GPSL setting once in-process and once on real Ray actors
(:class:`~eclm.runtime.ray_fleet.RayFleet`): the same protocol, the delay model's emulated time
beside the wall time.
"""

from __future__ import annotations

import os
import statistics
import time

from benchmarks.report import Table
from benchmarks.suites._split_platform import (
    SplitFleet,
    checked,
    data_config,
    held_out_accuracy,
    mean_std,
    platform_config,
    reservoir,
    sample_range,
    split_settings,
)

__all__ = ["PUBLISHED_GPSL", "run_gpsl", "run_gpsl_on_ray"]

PUBLISHED_GPSL = {"global": 84.31, "fixed_equal": 58.88, "fixed_proportional": 70.05, "centralised": "≈ GPSL"}
LABELS = {"global": "GPSL (global sampling)", "fixed_proportional": "fixed proportional",
          "fixed_equal": "fixed equal", "centralised": "centralised"}
_RAY_DEVICE = {"gflops": 2.0, "bandwidth_mbps": 20.0, "latency_ms": 5.0}


def gpsl_config(method: str, clients: int, seed: int, epochs: int, workdir: str, total: int | None = None,
                device: dict | None = None, ray: dict | None = None):
    """The platform config of one GPSL setting (``centralised``: one device with every class)."""
    size, test = reservoir(data_config(devices=1, classes=10, samples=(1, 1), seed=seed))
    total = min(total or size, size)
    if method == "centralised":
        data, names, sampler = data_config(devices=1, classes=10, samples=(total, total), seed=seed), 1, "global"
    else:
        data = data_config(devices=clients, classes=2, samples=sample_range(total, clients), seed=seed)
        names, sampler = clients, method
    devices = [{"name": f"c{i:02d}", **(device or {})} for i in range(names)]
    split = split_settings(sampler=sampler, epochs=epochs, seed=seed)
    return platform_config(f"gpsl-{method}", data, split, devices, seed=seed, workdir=workdir, ray=ray), test


def run_gpsl(clients: tuple[int, ...], epochs: int, seeds: int, workdir: str, total: int | None = None) -> dict:
    """GPSL vs fixed-equal vs fixed-proportional vs centralised, 2 classes per device."""
    results: dict[tuple[int, str], list[float]] = {}
    diverged: list[str] = []  # settings whose training diverged (their accuracy is what the model gives)
    central: list[float] = []
    for seed in range(seeds):  # centralised training does not depend on the client count
        cfg, test = gpsl_config("centralised", 1, seed, epochs, workdir, total)
        fleet = SplitFleet(cfg)
        central.append(held_out_accuracy(fleet.round(epochs), fleet.skeleton, test))
    for count in clients:
        for seed in range(seeds):
            for method in ("global", "fixed_proportional", "fixed_equal"):
                cfg, test = gpsl_config(method, count, seed, epochs, workdir, total)
                fleet = SplitFleet(cfg)
                result = fleet.round(epochs)
                if result.report.get("diverged"):
                    losses = ", ".join(f"{e['loss']:.3g}" for e in result.report["epochs"])
                    diverged.append(f"{LABELS[method]}, {count} clients, seed {seed} (training loss by epoch: {losses})")
                results.setdefault((count, method), []).append(held_out_accuracy(result, fleet.skeleton, test))
        results[(count, "centralised")] = central
    return _report(results, clients, epochs, seeds, diverged)


def _report(results: dict[tuple[int, str], list[float]], clients: tuple[int, ...], epochs: int, seeds: int,
            diverged: list[str] = ()) -> dict:
    rows = [[c, LABELS[m], 100 * mean_std(a)[0], 100 * mean_std(a)[1], len(a), PUBLISHED_GPSL[m]]
            for (c, m), a in results.items()]
    mean = {key: 100 * statistics.mean(a) for key, a in results.items()}
    summary = [f"GPSL through the platform, {c} clients with 2 classes each: {mean[(c, 'global')]:.1f}% vs fixed-equal "
               f"{mean[(c, 'fixed_equal')]:.1f}% and fixed-proportional {mean[(c, 'fixed_proportional')]:.1f}% "
               f"(centralised {mean[(c, 'centralised')]:.1f}%) after {epochs} epochs; published (CIFAR-10, "
               "128 clients): 84.31 / 58.88 / 70.05." for c in clients]
    notes = (
        "Every number is one platform split round (run_split_round over the cloud and edge services, in-process "
        "LocalFleet): the platform's modular resnet18 (stage widths 16/32/64/128, BatchNorm, 10 chain stages), "
        "cut after the stem (the device runs conv-BN-ReLU-maxpool), sklearn digits 16x16 grey. Partition: the "
        "platform's (data.classes_per_device: 2, classes dealt from shuffled decks); local sets drawn from the "
        "training reservoir of the device's classes (about 1420 images; devices sharing a class may hold the "
        "same image), sizes uniform in +-60% of an equal share, so uneven; test: the held-out 20% of every "
        "class (about 356 images). split.sampler global / fixed_proportional / fixed_equal, global batch 32, "
        f"SGD lr 0.05 momentum 0.9 (constant), epoch-end averaging of the device parts; {epochs} epochs, mean "
        f"and std over {seeds} seed(s) (partition, init, sampling). Centralised: one device holding the whole "
        "reservoir, the same round. Accuracy of the round's aggregated model in eval mode. The published "
        "setting differs: CIFAR-10, ResNet-18 cut after layer2, 128 clients (Kohankhaki et al., arXiv "
        "2407.15738).")
    if diverged:
        summary.append(f"Training diverged (non-finite loss) in {len(diverged)} run(s): {'; '.join(diverged)}; "
                       "their accuracy is the diverged model's, counted in the means.")
        notes += " Diverged runs (non-finite loss after the round): " + "; ".join(diverged) + "."
    table = Table("GPSL vs fixed local batches, severe non-IID (2 classes per client)",
                  ["clients", "sampler", "test acc % (mean)", "std", "seeds", "published %"], rows, notes=notes)
    raw = [{"clients": c, "method": m, "accuracies": a} for (c, m), a in results.items()]
    return {"table": table.to_dict(), "raw": raw, "summary": summary, "diverged": list(diverged)}


def run_gpsl_on_ray(clients: int, epochs: int, workdir: str) -> dict:
    """The GPSL setting (seed 0) in-process and on real Ray actors: accuracy, wall and emulated time."""
    from eclm.campaign.split_round import run_split_round
    from eclm.runtime.ray_fleet import RayFleet
    from eclm.runtime.ray_runtime import shutdown_ray, start_ray

    ray = {"edge_cpus": 0.01, "cloud_cpus": 0.5, "threads_per_actor": 1, "call_timeout_s": 1800}
    cfg, test = gpsl_config("global", clients, 0, epochs, workdir, device=_RAY_DEVICE, ray=ray)
    local = SplitFleet(cfg)
    runs = {"in-process (LocalFleet)": local.round(epochs)}
    load_before = os.getloadavg()
    started = start_ray(None, num_cpus=2, num_devices=clients)
    try:
        start = time.perf_counter()
        fleet = RayFleet(cfg)
        summaries = _summaries(fleet)  # the actors' first calls: they exist once these return
        actors_s = time.perf_counter() - start
        runs["Ray actors (RayFleet)"] = checked(run_split_round(fleet, summaries, epochs, 0, 1800.0))
        fleet.close()
    finally:
        if started:
            shutdown_ray()
    load = {"before": load_before, "after": os.getloadavg()}
    return _ray_report(runs, local, test, clients, epochs, actors_s, load)


def _summaries(fleet) -> dict:
    """Every device's summary of this cycle, gathered through ``fleet``.

    Raises:
        RuntimeError: If a call failed.
    """
    selector, failures = fleet.gather({"s": fleet.cloud.selector_payload()}, 1800.0)
    names = list(fleet.devices)
    summaries, more = fleet.gather({n: fleet.devices[n].summary(selector.get("s")) for n in names}, 1800.0)
    if failures or more:
        raise RuntimeError(f"summaries failed: {failures or more}")
    return summaries


def _ray_report(runs: dict, local: SplitFleet, test, clients: int, epochs: int, actors_s: float, load: dict) -> dict:
    rows, raw = [], []
    for binding, r in runs.items():
        m = r.round_metrics
        row = {"binding": binding, "test_acc": held_out_accuracy(r, local.skeleton, test),
               "train_loss": m["split/train_loss"], "real_s": m["split/real_seconds"],
               "emulated_s": m["split/emulated_seconds"], "bytes_up": sum(r.bytes_up.values())}
        raw.append(row)
        rows.append([binding, clients, epochs, 100 * row["test_acc"], row["train_loss"], row["real_s"],
                     row["emulated_s"], row["bytes_up"]])
    notes = (
        f"The GPSL setting of the table above (seed 0, {clients} clients, 2 classes each, cut after the stem), "
        f"{epochs} epoch(s), run by run_split_round in this process and on a local Ray bound to loopback (one "
        f"actor per device and the cloud actor, 1 torch thread each; starting them and their first calls took "
        f"{actors_s:.1f} s, not counted). Devices configured at 2 GFLOP/s, 20 Mbit/s, 5 ms latency. Real: wall-clock seconds of the "
        "round (hello to finish) on this shared host. Emulated: the delay model's round time (device compute "
        "scaled by measured host matmul speed / 2 GFLOP/s, exact bytes over the links, the epoch-end exchange "
        "and the first download of the device parts): what the devices would take. Same protocol and seeds, so "
        "accuracy and loss agree up to the emulated speeds (measured per process). Load average (1/5/15 min) "
        f"before Ray {'/'.join(f'{x:.1f}' for x in load['before'])}, after {'/'.join(f'{x:.1f}' for x in load['after'])}.")
    table = Table("One split round through the platform on real Ray actors vs in-process (GPSL setting)",
                  ["binding", "clients", "epochs", "test acc %", "train loss", "s real (round)",
                   "s emulated (delay model)", "bytes up (all devices)"], rows, notes=notes)
    ray_row = raw[-1]
    summary = [f"The GPSL split round on real Ray actors ({clients} clients, {epochs} epoch(s)): "
               f"{100 * ray_row['test_acc']:.1f}% test accuracy (in-process {100 * raw[0]['test_acc']:.1f}%), "
               f"{ray_row['real_s']:.1f} s wall time (in-process {raw[0]['real_s']:.1f} s) beside "
               f"{ray_row['emulated_s']:.1f} s emulated for devices at 2 GFLOP/s and 20 Mbit/s."]
    return {"table": table.to_dict(), "raw": {"runs": raw, "actors_s": actors_s, "load_average": load},
            "summary": summary}
