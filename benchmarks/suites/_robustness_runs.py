"""Campaigns of the robustness suite: the platform's cycle with some devices poisoning their uploads.

Every run is the platform's own cycle (:class:`~eclm.campaign.coordinator.CycleCoordinator` over a
:class:`~eclm.campaign.local.LocalFleet`, :func:`benchmarks.local_campaign.local_coordinator`)
starting from one pretrained cloud per (fleet size, seed); the attackers are real ``EdgeService``s
wrapped by :class:`~benchmarks.suites._attacks.AttackedDevice`. The cloud is the platform's
``CloudService``, its ``merge`` timed from outside (:class:`TimedCloud`). Defences off means the
robust screen disabled and ``merge.acceptance: threshold`` (the merge before issue #12); the claim
bounds and the integrity checks are part of admission and stay on.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from benchmarks.baselines.config import AdaptationBenchConfig
from benchmarks.baselines.records import CycleLog
from benchmarks.local_campaign import local_coordinator
from benchmarks.parallel import run_jobs
from benchmarks.progress import REPO_ROOT, Progress
from benchmarks.suites._attacks import ATTACKS, AttackedDevice, Collusion
from benchmarks.targets import git_commit
from eclm.campaign.messages import CloudSnapshot
from eclm.config import PlatformConfig
from eclm.gateway import DeviceGateway, RemoteDevice
from eclm.pipelines.cloud_service import CloudService
from eclm.pipelines.edge_service import EdgeService

DEFENCES_OFF = {"screen": {"enabled": False}, "acceptance": "threshold"}


class RobustnessBenchConfig(BaseModel):
    """What the robustness suite runs (presets: :meth:`for_mode`)."""

    model_config = ConfigDict(extra="forbid")

    seeds: int = Field(3, ge=1, le=10, description="repetitions (data split, streams, init, training, noise)")
    cycles: int = Field(10, ge=1, le=100, description="adaptation cycles; every device takes part in every cycle")
    attacks: list[str] = Field(default_factory=lambda: list(ATTACKS), min_length=1, description="attacks run")
    shares: list[tuple[int, int]] = Field(
        default_factory=lambda: [(1, 5), (3, 20)], min_length=1,
        description="(attackers, devices) settings; the attackers attack in every cycle")
    undefended_attacks: bool = Field(
        True, description="also run every attack with the defences off (the clean run always runs both ways)")
    label_skew: int = Field(3, ge=1, le=10, description="classes per device")
    epochs: int = Field(2, ge=1, description="local epochs per cycle")
    channels: tuple[int, int, int, int] = Field((16, 32, 64, 128), description="resnet18 stage widths")
    modules_per_layer: int = Field(4, ge=2, le=16)
    samples_per_device: tuple[int, int] = Field((80, 120), description="local training set size range")
    offline_epochs: int = Field(12, ge=0, description="offline stage-1 epochs of the pretrained cloud")
    enhance_epochs: int = Field(2, ge=0, description="offline stage-2 epochs")
    workers: int = Field(0, ge=0, le=16, description="parallel worker processes, one (share, seed) setting each "
                         "(0 = every setting in this process)")
    absent_run: bool = Field(
        True, description="also run the clean defended campaign without the attackers' devices (they are never "
        "served): what a defence that excludes every attacking round costs at best, the attackers' own data")
    only: list[str] = Field(
        default_factory=list, description="run only these kinds of campaign of the plan (attack names, 'clean', "
        "'absent'; empty = the whole plan), e.g. to add a reference to a finished protocol (python -m "
        "benchmarks.suites._robustness_runs)")
    gateway_run: bool = Field(
        True, description="run the clean defended campaign once more with every device behind a device gateway "
        "(HTTP on 127.0.0.1, eclm.gateway) to measure the channel's overhead")

    @field_validator("attacks")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = [a for a in v if a not in ATTACKS]
        if unknown:
            raise ValueError(f"unknown attacks {unknown}; known: {list(ATTACKS)}")
        return list(dict.fromkeys(v))

    @field_validator("only")
    @classmethod
    def _kinds(cls, v: list[str]) -> list[str]:
        unknown = [k for k in v if k not in (*ATTACKS, "clean", "absent")]
        if unknown:
            raise ValueError(f"unknown campaign kinds {unknown}; known: {['clean', 'absent', *ATTACKS]}")
        return v

    @field_validator("shares")
    @classmethod
    def _shares(cls, v: list[tuple[int, int]]) -> list[tuple[int, int]]:
        if any(not 1 <= k < n for k, n in v):
            raise ValueError(f"every share needs 1 <= attackers < devices, got {v}")
        return v

    def platform_config(self, devices: int, seed: int, workdir: Path, defended: bool = True) -> PlatformConfig:
        """The platform config of one run: the adaptation benchmark's setting (digits, drift,
        device tiers; :class:`~benchmarks.baselines.config.AdaptationBenchConfig`) at this size."""
        base = AdaptationBenchConfig(
            label_skews=[self.label_skew], num_devices=devices, cycles=self.cycles, channels=self.channels,
            modules_per_layer=self.modules_per_layer, samples_per_device=self.samples_per_device,
            offline_epochs=self.offline_epochs, enhance_epochs=self.enhance_epochs, epoch_budgets=[self.epochs],
        ).platform_config(self.label_skew, seed, workdir, self.epochs)
        if defended:
            return base
        raw = base.model_dump(mode="json")
        return PlatformConfig.from_dict(raw | {"merge": raw["merge"] | DEFENCES_OFF})

    @classmethod
    def for_mode(cls, mode: str) -> RobustnessBenchConfig:
        """``full``: issue #12's protocol (every attack, 1 of 5 and 3 of 20, 10 cycles, 3 seeds, defended
        and undefended); ``quick``: narrower model, 1 of 5, three attacks, 3 cycles, one seed (minutes);
        ``smoke``: one attack, 2 cycles, a tiny model (seconds).

        Raises:
            ValueError: For an unknown mode.
        """
        if mode == "full":
            return cls(workers=2)
        if mode == "quick":
            return cls(seeds=1, cycles=3, attacks=["sign_flip", "scale_x10", "label_flip"],
                       shares=[(1, 5)], undefended_attacks=False, epochs=1, channels=(8, 16, 32, 64),
                       offline_epochs=6, enhance_epochs=1)
        if mode == "smoke":
            return cls(seeds=1, cycles=2, attacks=["sign_flip"], shares=[(1, 3)], undefended_attacks=False,
                       label_skew=2, epochs=1, channels=(8, 8, 16, 16), modules_per_layer=2,
                       samples_per_device=(20, 30), offline_epochs=1, enhance_epochs=0)
        raise ValueError(f"mode must be 'quick', 'full' or 'smoke', got {mode!r}")


class TimedCloud(CloudService):
    """The platform's cloud service; each ``merge`` call's wall seconds are kept in ``merge_seconds``
    and its CPU seconds (this process, one torch thread) in ``merge_cpu_seconds``: on a shared
    machine the CPU time is the figure other processes do not inflate."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.merge_seconds: list[float] = []
        self.merge_cpu_seconds: list[float] = []

    def merge(self, uploads):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return super().merge(uploads)
        finally:
            self.merge_seconds.append(time.perf_counter() - t0)
            self.merge_cpu_seconds.append(time.process_time() - c0)


def attackers_of(k: int, n: int) -> list[int]:
    """Device indices of ``k`` attackers among ``n``, spread over the fleet (and its tiers)."""
    return sorted({round(i * n / k) for i in range(k)})


def run_settings(config: RobustnessBenchConfig, progress: Progress | None = None) -> list[dict]:
    """Every (share, seed) setting (:func:`run_setting`), in ``config.workers`` spawned processes
    when above 0; the settings with the most devices start first (they take longest).

    Args:
        config: What to run.
        progress: Where finished campaigns are kept (:mod:`benchmarks.progress`); those found
            there are not run again.

    Returns:
        The runs' records, by share (as configured), then seed.
    """
    keys = [(tuple(share), seed) for share in config.shares for seed in range(config.seeds)]
    order = sorted(range(len(keys)), key=lambda i: -keys[i][0][1])
    payload, where = config.model_dump_json(), None if progress is None else str(progress.directory)
    done = run_jobs(_setting_job, [(payload, *keys[i], where) for i in order], config.workers)
    by_key = dict(zip((keys[i] for i in order), done, strict=True))
    return [r for key in keys for r in by_key[key]]


def _setting_job(config_json: str, share: tuple[int, int], seed: int, progress: str | None = None) -> list[dict]:
    """:func:`run_setting` on one torch thread, from the config as JSON (a worker process's job)."""
    torch.set_num_threads(1)
    return run_setting(RobustnessBenchConfig.model_validate_json(config_json), tuple(share), seed,
                       None if progress is None else Progress(progress))


def setting_plan(config: RobustnessBenchConfig, share: tuple[int, int]) -> list[tuple[str, bool, bool]]:
    """The campaigns of one setting, ``(attack, defended, over the gateway)``: clean with and
    without defences, (``absent_run``) clean without the attackers' devices, each attack defended,
    then (``undefended_attacks``) undefended, then the gateway run; collusion only with two
    attackers or more; with ``only``, the campaigns of those kinds alone."""
    plan = [("clean", True, False), ("clean", False, False)] + ([("absent", True, False)] if config.absent_run else [])
    plan += [(a, True, False) for a in config.attacks]
    plan += [(a, False, False) for a in config.attacks] if config.undefended_attacks else []
    plan += [("clean", True, True)] if config.gateway_run else []
    return [p for p in plan if (p[0] != "collude" or share[0] >= 2) and (not config.only or p[0] in config.only)]


def campaign_key(share: tuple[int, int], seed: int, attack: str, defended: bool, gateway: bool) -> str:
    """The name one campaign's record is kept under in a :class:`~benchmarks.progress.Progress`."""
    return f"{share[0]}of{share[1]}_seed{seed}_{attack}_{'on' if defended else 'off'}{'_gateway' if gateway else ''}"


def run_setting(config: RobustnessBenchConfig, share: tuple[int, int], seed: int,
                progress: Progress | None = None) -> list[dict]:
    """Every campaign of one (share, seed) (:func:`setting_plan`), from one pretrained cloud.

    With ``progress``, a campaign whose record is there is taken from it (the cloud is pretrained
    only if one is missing) and each finished campaign is written there at once.

    Returns:
        One record per run (:func:`run_campaign`), with ``pretrain_seconds`` of the shared cloud.
    """
    k, n = share
    plan = setting_plan(config, share)
    keys = [campaign_key(share, seed, *p) for p in plan]
    found = {key: progress.get(key) for key in keys} if progress is not None else {}
    commit = git_commit(REPO_ROOT) if progress is not None else None
    runs = []
    with tempfile.TemporaryDirectory(prefix="eclm-robust-") as tmp:
        pretrained, pretrain_s = None, 0.0
        for key, (attack, defended, gateway) in zip(keys, plan, strict=True):
            record = found.get(key)
            resumed = record is not None
            if not resumed:
                if pretrained is None:
                    cloud = CloudService(config.platform_config(n, seed, Path(tmp)))
                    t0 = time.perf_counter()
                    cloud.pretrain()
                    pretrain_s, pretrained = time.perf_counter() - t0, cloud.snapshot()
                    del cloud
                pcfg = config.platform_config(n, seed, Path(tmp), defended)
                record = run_campaign(pcfg, pretrained, attack, attackers_of(k, n) if attack != "clean" else [],
                                      config.cycles, seed, gateway=gateway)
                record |= {"share": f"{k} of {n}", "seed": seed, "defended": defended, "pretrain_seconds": pretrain_s}
                if progress is not None:
                    record = progress.put(key, record, commit)
            runs.append(record)
            print(f"[robustness] {k} of {n}, seed {seed}, {attack}{' over the gateway' if gateway else ''}, "
                  f"defences {'on' if defended else 'off'}{' (resumed)' if resumed else ''}: "
                  f"val {record['final_val_acc']:.3f}, attacker excluded {record['attacker_excluded']}/"
                  f"{record['attacker_rounds']}, honest excluded {record['honest_excluded']}/"
                  f"{record['honest_rounds']}, merge {sum(record['merge_seconds']):.1f} s "
                  f"({sum(record['merge_cpu_seconds']):.1f} s CPU)", flush=True)
    return runs


def run_campaign(config: PlatformConfig, pretrained: CloudSnapshot, attack: str, attackers: list[int],
                 cycles: int, seed: int, gateway: bool = False) -> dict:
    """One campaign; every device takes part in every cycle, ``attackers`` poison every upload
    (``attack="absent"``: the attackers' devices are never served and the others are clean).

    With ``gateway`` every device's service runs behind a :class:`~eclm.gateway.DeviceGateway` on
    127.0.0.1 (a thread of this process) and the fleet reaches it through a
    :class:`~eclm.gateway.RemoteDevice`: the same campaign over the bytes-only channel.

    Returns:
        ``{"attack", "gateway", "val_acc": [per cycle], "final_val_acc", "seen_acc": [per cycle: the
        cloud's accuracy under the environments seen so far, or None], "final_seen_acc", "val_samples", "attacker_rounds",
        "attacker_excluded", "honest_rounds", "honest_excluded", "merge_seconds",
        "merge_cpu_seconds": [per cycle], "decisions", "cycle_seconds", "payload_bytes",
        "channel_bytes"}`` (the last: bytes through the gateways, frames included; 0 without).

    Raises:
        RuntimeError: If a device or the cloud failed in a cycle (no figure over fewer devices).
    """
    names = [d.name for d in config.devices]
    bad = {names[i] for i in attackers}
    served = [n for n in names if attack != "absent" or n not in bad]
    poisoned = set() if attack == "absent" else bad
    collusion = Collusion()

    gateways, remotes = [], []

    def device(i: int):
        service = EdgeService(config, i, 1)
        service = AttackedDevice(service, attack, seed * 1000 + i, collusion) if names[i] in poisoned else service
        if not gateway:
            return service
        gateways.append(DeviceGateway(service).start())
        remotes.append(RemoteDevice(names[i], gateways[-1].url))
        return remotes[-1]

    log = CycleLog()
    coordinator = local_coordinator(config, pretrained, {n: partial(device, i) for i, n in enumerate(names)},
                                    cloud=TimedCloud, recorder=log)
    t0 = time.perf_counter()
    try:
        for _ in range(cycles):
            coordinator.observe()
            coordinator.run_cycle(served, reason="benchmark")
        cloud = coordinator.fleet.cloud.service
        merge_seconds, merge_cpu = list(cloud.merge_seconds), list(cloud.merge_cpu_seconds)
        val_samples = len(cloud.val_y)
    finally:
        coordinator.fleet.close()
        for g in gateways:
            g.close()
    record = {"attack": attack, "gateway": gateway, "val_acc": [], "seen_acc": [], "val_samples": val_samples,
              "attacker_rounds": 0, "attacker_excluded": 0, "honest_rounds": 0, "honest_excluded": 0,
              "merge_seconds": merge_seconds, "merge_cpu_seconds": merge_cpu, "decisions": [],
              "cycle_seconds": time.perf_counter() - t0, "payload_bytes": 0,
              "channel_bytes": sum(r.bytes_sent + r.bytes_received for r in remotes)}
    for result, _ in log.cycles:
        if result.failures:
            raise RuntimeError(f"cycle {result.round} failed for {sorted(result.failures)}: {result.failures}")
        accepted = set(result.merge.accepted)
        for name in result.devices:
            kind = "attacker" if name in bad else "honest"
            record[f"{kind}_rounds"] += 1
            record[f"{kind}_excluded"] += name not in accepted
        record["val_acc"].append(result.cloud_val_acc)
        record["seen_acc"].append(result.merge.cloud_seen_acc)
        record["payload_bytes"] += sum(result.bytes_up.values()) + sum(result.bytes_down.values())
        record["decisions"].append({"decision": result.merge.decision, "rejected": dict(result.merge.rejected)})
    record["final_val_acc"], record["final_seen_acc"] = record["val_acc"][-1], record["seen_acc"][-1]
    return record


def main(argv: list[str] | None = None) -> None:
    """Some kinds of campaign of a mode's plan alone, e.g. the ``absent`` reference beside a finished
    protocol: ``python -m benchmarks.suites._robustness_runs --mode full --only absent --out DIR``.

    Records go to ``DIR/runs.json`` (the shape :func:`run_campaign` returns, with share, seed and
    defences), finished campaigns to ``DIR/progress`` (a stopped run resumes there). Every
    (share, seed) pretrains its cloud from the same seed as the suite does.
    """
    parser = argparse.ArgumentParser(prog="python -m benchmarks.suites._robustness_runs", description=main.__doc__)
    parser.add_argument("--mode", choices=("quick", "full", "smoke"), default="quick")
    parser.add_argument("--only", nargs="+", required=True, help="campaign kinds: clean, absent or attack names")
    parser.add_argument("--out", type=Path, required=True, help="directory for runs.json and the progress")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: the mode's)")
    args = parser.parse_args(argv)
    base = RobustnessBenchConfig.for_mode(args.mode).model_dump()
    workers = base["workers"] if args.workers is None else args.workers
    config = RobustnessBenchConfig.model_validate(base | {"only": args.only, "workers": workers})
    runs = run_settings(config, Progress(args.out / "progress"))
    (args.out / "runs.json").write_text(json.dumps(runs, indent=1))
    print(f"[robustness] {len(runs)} campaign(s) written to {args.out / 'runs.json'}", flush=True)


if __name__ == "__main__":
    main()
