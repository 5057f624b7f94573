"""One run of the adaptation benchmark: every method, one label skew, one seed, in one process.

Each method runs the platform's own cycle: a :class:`~eclm.campaign.coordinator.CycleCoordinator`
over a :class:`~eclm.campaign.local.LocalFleet` of in-process services (the code the Ray actors
run), with the method's server strategy and cloud service (:mod:`benchmarks.baselines.methods`).
Every method gets the same data: its fleet builds its own ``EdgeService`` per device from the
same config and seed (the data streams are deterministic, and ``eclm.data.load_dataset`` keeps
one copy of the dataset per process), and its cloud starts from the same pretrained snapshot.
Per cycle, ``coordinator.observe()`` advances every device one drift step and
``coordinator.run_cycle(sampled)`` runs the cycle for the sampled devices (the same sample for
every method). Methods run one after the other, so memory stays flat.

Each method runs at every epoch budget (``AdaptationBenchConfig.epoch_budgets``) with its own
adaptation settings (:attr:`~benchmarks.baselines.methods.BenchMethod.adaptation`: dense or
module-sparse training, what its exchange sends); data, devices, schedule, seeds and the training
hyper-parameters are the same for all. Accuracy is reported twice: argmax over all 10 classes
(what the platform logs) and argmax over the device's own classes (a label-skewed device knows
which classes it can see).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from benchmarks.baselines.config import AdaptationBenchConfig
from benchmarks.baselines.methods import METHODS, BenchMethod
from benchmarks.baselines.records import CycleLog, device_records, server_record
from benchmarks.local_campaign import local_coordinator
from eclm.campaign.messages import CloudInfo, CloudSnapshot
from eclm.config import PlatformConfig
from eclm.modules import CostTable
from eclm.pipelines.adaptation import effective_batch as effective_batch_of
from eclm.pipelines.cloud_service import CloudService
from eclm.pipelines.edge_service import EdgeService


def run_job(config_json: str, label_skew: int, seed: int, threads: int = 1) -> dict:
    """Run every configured method at every epoch budget for one (label skew, seed).

    Args:
        config_json: :class:`AdaptationBenchConfig` as JSON (so the job can run in a worker process).
        label_skew: Classes per device of this setting.
        seed: Seed of data split, streams, initialisation and training.
        threads: torch threads of this process.

    Returns:
        ``{"label_skew", "seed", "pretrain_seconds", "cloud_val_acc", "runs": {epochs: {"records":
        {method: [...]}, "server": {method: [...]}, "method_seconds": {method: s}}}, "arch",
        "layer_sizes", "full_cost", "effective_batch", "num_devices", "sampled_per_cycle"}``
        (``epochs`` as a string key).
    """
    cfg = AdaptationBenchConfig.model_validate_json(config_json)
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="eclm-bench-") as tmp:
        workdir = Path(cfg.workdir or tmp)
        setup = prepare(cfg, label_skew, seed, workdir, threads)
        runs = {}
        for epochs in cfg.epoch_budgets:
            run: dict[str, dict] = {"records": {}, "server": {}, "method_seconds": {}}
            for name in cfg.methods:
                method = METHODS[name]
                run["records"][name], run["server"][name], run["method_seconds"][name] = setup.run(
                    method, epochs, dict(method.adaptation))
            runs[str(epochs)] = run
    info = setup.info
    return {
        "label_skew": label_skew, "seed": seed, "pretrain_seconds": setup.pretrain_seconds,
        "cloud_val_acc": setup.pretrained.best_val_acc, "runs": runs,
        "arch": info.arch, "layer_sizes": list(info.layer_sizes), "full_cost": info.full_cost,
        "effective_batch": setup.effective_batch, "num_devices": cfg.num_devices, "sampled_per_cycle": cfg.sampled,
    }


@dataclass
class JobSetup:
    """What every method of one (label skew, seed) job shares: the pretrained cloud and the schedule.

    Attributes:
        config: The benchmark config.
        label_skew: Classes per device.
        seed: The job's seed.
        workdir: Where cloud checkpoints go.
        threads: torch threads of the services.
        pretrained: The pretrained cloud every method starts from.
        info: Its architecture facts (cost table).
        pretrain_seconds: Wall time of the pretraining.
        effective_batch: Batch of the analytic training-memory estimate.
        schedule: Per cycle, the devices taking part (the same for every method).
    """

    config: AdaptationBenchConfig
    label_skew: int
    seed: int
    workdir: Path
    threads: int
    pretrained: CloudSnapshot
    info: CloudInfo
    pretrain_seconds: float
    effective_batch: int
    schedule: list[list[str]]

    def run(self, method: BenchMethod, epochs: int, adaptation: dict) -> tuple[list[dict], list[dict], float]:
        """One method's campaign at ``epochs`` local epochs with ``adaptation`` settings (the method's
        own, or a variant of them) over the benchmark's shared ones (:func:`run_method`)."""
        mcfg = self.config.platform_config(self.label_skew, self.seed, self.workdir, epochs, adaptation)
        return run_method(method, mcfg, self.pretrained, self.info, self.schedule, self.effective_batch,
                          self.threads)


def prepare(cfg: AdaptationBenchConfig, label_skew: int, seed: int, workdir: Path, threads: int = 1) -> JobSetup:
    """Pretrain the job's cloud and draw its schedule (deterministic in ``seed`` and ``label_skew``)."""
    pcfg = cfg.platform_config(label_skew, seed, workdir)
    cloud = CloudService(pcfg, threads)
    t0 = time.perf_counter()
    cloud.pretrain()
    pretrain_s = time.perf_counter() - t0
    pretrained, info = cloud.snapshot(), cloud.info()
    del cloud
    a = pcfg.adaptation
    effective_batch = effective_batch_of(a.batch_size, a.replay_ratio, a.replay_capacity > 0)
    rng = np.random.default_rng([seed, label_skew, 17])
    names = [d.name for d in pcfg.devices]
    schedule = [[names[i] for i in sorted(rng.choice(len(names), size=cfg.sampled, replace=False).tolist())]
                for _ in range(cfg.cycles)]
    return JobSetup(cfg, label_skew, seed, workdir, threads, pretrained, info, pretrain_s, effective_batch, schedule)


def run_method(method: BenchMethod, config: PlatformConfig, pretrained: CloudSnapshot, info: CloudInfo,
               schedule: list[list[str]], effective_batch: int, threads: int = 1) -> tuple[list[dict], list[dict], float]:
    """Run one method's campaign through the platform's coordinator.

    Args:
        method: The method (cloud service class and server strategy).
        config: The platform config of this (label skew, seed).
        pretrained: The pretrained cloud every method starts from.
        info: The pretrained cloud's architecture facts (cost table).
        schedule: Per cycle, the devices taking part.
        effective_batch: Batch of the analytic training-memory estimate.
        threads: torch threads of the services.

    Returns:
        ``(device records, server records, seconds spent in the cycles)``.
    """
    log = CycleLog()
    devices = {d.name: partial(EdgeService, config, i, threads) for i, d in enumerate(config.devices)}
    coordinator = local_coordinator(config, pretrained, devices, threads=threads, cloud=method.cloud,
                                    strategy=method.strategy(), recorder=log)
    seconds = 0.0
    try:
        for sampled in schedule:
            coordinator.observe()  # every device's data moves one drift step
            t0 = time.perf_counter()
            coordinator.run_cycle(sampled, reason="benchmark")
            seconds += time.perf_counter() - t0
    finally:
        coordinator.fleet.close()
    costs = CostTable.from_dict(info.costs)
    records = [r for result, summaries in log.cycles
               for r in device_records(result, summaries, costs, effective_batch, method.adapts)]
    return records, [server_record(result, method.merges) for result, _ in log.cycles], seconds

