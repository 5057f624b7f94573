"""One run of the adaptation benchmark: every method, one label skew, one seed, in one process.

The cycle mirrors ``Platform.run_cycle`` without Ray (the actors run the very same service
code): every device's stream advances one drift step, the cycle's devices are sampled (the same
sample for every method), and for each method each sampled device is served in turn:

1. accuracy of the model it held until now on the *previous* environment (for forgetting);
2. ``deliver``: what the method sends it (derived sub-model, global slice, or nothing);
3. accuracy on the current environment before adapting (the delivered or held model);
4. ``EdgeService.adapt`` (skipped by NA): local fine-tuning with replay;
5. accuracy on the current and the previous environment after adapting.

Then the method's server step runs on the uploads (eclm's validated merge, FedAvg, HeteroFL).
Accuracy is reported twice: argmax over all 10 classes (what the platform logs) and argmax over
the device's own classes (a label-skewed device knows which classes it can see).
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from benchmarks.baselines.base import AdaptationMethod, occupy
from benchmarks.baselines.config import AdaptationBenchConfig
from benchmarks.baselines.eclm_method import EclmMethod
from benchmarks.baselines.fedavg import FedAvg
from benchmarks.baselines.heterofl import HeteroFL
from benchmarks.baselines.local_adaptation import LocalAdaptation
from benchmarks.baselines.no_adaptation import NoAdaptation
from eclm.data import LabelledImages
from eclm.pipelines.adaptation import training_memory_bytes
from eclm.pipelines.cloud_service import CloudService
from eclm.pipelines.edge_service import EdgeService

METHODS: dict[str, type[AdaptationMethod]] = {
    cls.name: cls for cls in (NoAdaptation, LocalAdaptation, FedAvg, HeteroFL, EclmMethod)
}


@torch.no_grad()
def accuracies(model: nn.Module, data: LabelledImages | None, classes: list[int]) -> tuple[float, float] | None:
    """``(10-way accuracy, accuracy with the argmax restricted to classes)`` or ``None`` if no data."""
    if model is None or data is None or len(data.labels) == 0:
        return None
    was = model.training
    model.eval()
    logits: Tensor = torch.cat([model(data.images[i : i + 256]) for i in range(0, len(data.labels), 256)])
    model.train(was)
    cls = torch.as_tensor(sorted(classes))
    all_way = (logits.argmax(-1) == data.labels).float().mean().item()
    own = (cls[logits[:, cls].argmax(-1)] == data.labels).float().mean().item()
    return all_way, own


def run_job(config_json: str, label_skew: int, seed: int, threads: int = 1) -> dict:
    """Run every configured method for one (label skew, seed) and return per-device records.

    Args:
        config_json: :class:`AdaptationBenchConfig` as JSON (so the job can run in a worker process).
        label_skew: Classes per device of this setting.
        seed: Seed of data split, streams, initialisation and training.
        threads: torch threads of this process.

    Returns:
        ``{"label_skew", "seed", "pretrain_seconds", "cloud_val_acc", "records": {method: [...]},
        "server": {method: [...]}, "method_seconds": {method: s}, "arch", "layer_sizes",
        "full_cost", "effective_batch"}``.
    """
    cfg = AdaptationBenchConfig.model_validate_json(config_json)
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="eclm-bench-") as tmp:
        pcfg = cfg.platform_config(label_skew, seed, Path(cfg.workdir or tmp))
        cfg_json = pcfg.model_dump_json()
        cloud = CloudService(cfg_json, threads)
        t0 = time.perf_counter()
        cloud.pretrain()
        pretrain_s = time.perf_counter() - t0
        services = _devices(cfg_json, pcfg.data.num_devices, threads, cloud.selector_payload())
        cloud.info()  # measure the cost table once, before the methods copy the cloud
        methods = {name: METHODS[name](copy.deepcopy(cloud), services) for name in cfg.methods}
        a = pcfg.adaptation
        # Steady-state batch: fresh samples plus replayed ones (the replay buffer fills after cycle 1).
        effective_batch = a.batch_size + int(round(a.replay_ratio * a.batch_size)) if a.replay_capacity else a.batch_size
        records: dict[str, list[dict]] = {name: [] for name in methods}
        server: dict[str, list[dict]] = {name: [] for name in methods}
        seconds = dict.fromkeys(methods, 0.0)
        rng = np.random.default_rng([seed, label_skew, 17])
        for round_index in range(1, cfg.cycles + 1):
            for service in services:
                service.advance(pcfg.steps_per_cycle)
            sampled = sorted(rng.choice(len(services), size=cfg.sampled, replace=False).tolist())
            for name, method in methods.items():
                t0 = time.perf_counter()
                method.begin_cycle(round_index)
                uploads = []
                for i in sampled:
                    record, upload = _serve(method, services[i], round_index, effective_batch)
                    records[name].append(record)
                    if upload is not None:
                        uploads.append(upload)
                t1 = time.perf_counter()
                step = method.finish_cycle(uploads) if method.merges else {}
                server[name].append(dict(step, round=round_index, seconds=time.perf_counter() - t1))
                seconds[name] += time.perf_counter() - t0
        info = cloud.info()
        return {
            "label_skew": label_skew, "seed": seed, "pretrain_seconds": pretrain_s,
            "cloud_val_acc": cloud.best_val_acc, "records": records, "server": server, "method_seconds": seconds,
            "arch": info["arch"], "layer_sizes": info["layer_sizes"], "full_cost": info["full_cost"],
            "effective_batch": effective_batch, "num_devices": len(services), "sampled_per_cycle": cfg.sampled,
        }


def _devices(cfg_json: str, n: int, threads: int, selector: bytes) -> list[EdgeService]:
    """All devices; they share one copy of the dataset (each service would otherwise hold its own)."""
    services = [EdgeService(cfg_json, i, threads) for i in range(n)]
    shared = services[0].stream.data
    for s in services:
        if not torch.equal(s.stream.data.labels, shared.labels):
            raise RuntimeError(f"device {s.name} loaded a different dataset than device 0")
        s.stream.data = shared
        # Every method's uploads carry importance from the cloud's selector, not a random one.
        s.load_selector(selector)
    return services


def _serve(method: AdaptationMethod, service: EdgeService, round_index: int,
           effective_batch: int) -> tuple[dict, dict | None]:
    """Serve one device for one method in one cycle; returns its record and its upload (if any)."""
    with occupy(service, method.slots[service.name]) as svc:
        classes = list(svc.classes)
        test, prev = svc.stream.test_set(), svc.stream.previous_test_set()
        held_prev = accuracies(svc.model, prev, classes) if svc.model is not None else None
        down = method.deliver(svc)
        before = accuracies(svc.model, test, classes)
        upload, metrics = None, {}
        if method.adapts:
            upload = svc.adapt()
            metrics = upload["metrics"]
        after = accuracies(svc.model, test, classes) if method.adapts else before
        prev_after = accuracies(svc.model, prev, classes)
        cost = method.costs.total(svc.spec)
        record = {
            "round": round_index, "device": svc.name, "tier": svc.profile().get("params_fraction"),
            "classes": classes, "environment": svc.stream.environment.corruption,
            "acc_before": _pick(before, 0), "acc_before_dev": _pick(before, 1),
            "acc_after": _pick(after, 0), "acc_after_dev": _pick(after, 1),
            # Forgetting: what the device's model knew about the previous environment at the end of
            # its last cycle, minus what it knows after this cycle (re-delivery + adaptation).
            "forgetting": _diff(held_prev, prev_after, 0), "forgetting_dev": _diff(held_prev, prev_after, 1),
            "bytes_down": down, "bytes_up": len(upload["payload"]) if upload and method.merges else 0,
            "seconds_per_batch": metrics.get("seconds_per_batch"), "batches": metrics.get("batches"),
            "params": cost["params"], "flops": cost["flops"], "activation_bytes": cost["activation_bytes"],
            "train_memory": training_memory_bytes(cost["params"], cost["activation_bytes"], effective_batch)
            if method.adapts else None,
            "groups": [list(g) for g in svc.spec.groups],
        }
    return record, upload if method.merges else None


def _pick(pair: tuple[float, float] | None, i: int) -> float | None:
    return None if pair is None or math.isnan(pair[i]) else pair[i]


def _diff(a: tuple[float, float] | None, b: tuple[float, float] | None, i: int) -> float | None:
    if a is None or b is None:
        return None
    return a[i] - b[i]
