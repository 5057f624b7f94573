"""A campaign interrupted and resumed from its store, with the real services in this process.

The coordinator, the services and the stores are the platform's; only the binding differs from
``Platform`` (in-process instead of Ray). One torch thread and fixed seeds: an interrupted and
resumed campaign must end exactly where an uninterrupted one does.
"""

from __future__ import annotations

import torch

from eclm.campaign.coordinator import CycleCoordinator
from eclm.campaign.local import LocalFleet
from eclm.campaign.store import CampaignStore
from eclm.config import PlatformConfig
from eclm.modules import unpack_state
from eclm.pipelines.cloud_service import CloudService
from eclm.pipelines.edge_service import EdgeService

torch.set_num_threads(1)


def config(workdir) -> PlatformConfig:
    return PlatformConfig.from_dict({
        "name": "resume", "workdir": str(workdir),
        "data": {"source": "digits", "image_size": 16, "num_devices": 3, "classes_per_device": 3,
                 "samples_per_device": [30, 40]},
        "backbone": {"name": "resnet18", "kwargs": {"channels": [8, 8, 16, 16]}, "modules_per_layer": 2},
        "offline": {"epochs": 2, "enhance_epochs": 1, "batch_size": 32, "classes_per_subtask": 3},
        "devices": [{"name": "d0"}, {"name": "d1", "params_fraction": 0.6}, {"name": "d2"}],
        "adaptation": {"epochs": 1},
        "tracking": {"enabled": False},
    })


def fleet(cfg: PlatformConfig, store: CampaignStore, positions: dict | None = None) -> LocalFleet:
    def device(i: int, name: str):
        return lambda: EdgeService(cfg, i, store_dir=store.device_dir(name), resume_at=(positions or {}).get(name))

    return LocalFleet(lambda: CloudService(cfg), {d.name: device(i, d.name) for i, d in enumerate(cfg.devices)})


def resumed(cfg: PlatformConfig) -> CycleCoordinator:
    """A fresh process's view: the newest run's last commit, every service rebuilt from the stores."""
    store = CampaignStore.latest(cfg.workdir, cfg.name)
    state, snapshot = store.load_latest()
    co = CycleCoordinator(fleet(cfg, store, state.positions), cfg, store=store, state=state)
    co.fleet.recreate_cloud(snapshot)
    co.connect()
    return co


def _files(store: CampaignStore) -> dict:
    return {p.relative_to(store.root): p.read_bytes() for p in store.root.rglob("*")
            if p.is_file() and "devices" not in p.parts}


def campaign(workdir, steps: int, interrupt_after: int | None = None) -> tuple[str, list, dict, dict]:
    """Run ``steps`` steps, optionally "killing" the process after ``interrupt_after`` of them.

    Returns:
        The cloud digest, per round ``(round, decision, version)``, and the run's files (outside
        the device stores) at the interruption and at the end.
    """
    cfg = config(workdir)
    store = CampaignStore.create(cfg)
    co = CycleCoordinator(fleet(cfg, store), cfg, store=store)
    co.connect()
    co.pretrain()
    first = interrupt_after if interrupt_after is not None else steps
    results = co.run(first)
    at_interrupt = _files(store)
    if interrupt_after is not None:
        del co  # the process "dies" after its last commit; nothing in memory survives
        co = resumed(cfg)
        results += co.run(steps - first)
    digest = co.fleet.cloud.service.state_digest()
    return digest, [(r.round, r.merge.decision, r.merge.version) for r in results], at_interrupt, _files(store)


def test_an_interrupted_and_resumed_campaign_ends_bit_identical_to_an_uninterrupted_one(tmp_path):
    digest, rounds, _, _ = campaign(tmp_path / "straight", steps=3)
    resumed_digest, resumed_rounds, before, after = campaign(tmp_path / "resumed", steps=3, interrupt_after=2)
    assert resumed_rounds == rounds and [r for r, *_ in rounds] == [1, 2, 3]  # round numbers continue
    assert resumed_digest == digest
    # Resuming never rewrote a file of rounds 0-2; round 3 added its own.
    assert {k: after[k] for k in before} == before and len(after) > len(before)


def test_a_restarted_device_keeps_its_adapted_weights_and_receives_a_delta(tmp_path):
    cfg = config(tmp_path).model_copy(update={"merge": config(tmp_path).merge.model_copy(
        update={"tolerance": 1.0, "device_tolerance": 1.0})})
    store = CampaignStore.create(cfg)
    co = CycleCoordinator(fleet(cfg, store), cfg, store=store)
    co.connect()
    co.pretrain()
    first = co.run(1)[0]
    assert first.merge.changed
    adapted = unpack_state(co.fleet.devices["d0"].service.snapshot_model())[0]
    co.fleet.restart_devices(["d0"])  # the device's process died; it comes back from its store
    restored = co.fleet.devices["d0"].service
    assert all(torch.equal(v, unpack_state(restored.snapshot_model())[0][k]) for k, v in adapted.items())
    second = co.run_cycle()
    held = second.specs["d0"]
    assert not second.failures and held == first.specs["d0"]
    full = len(first.bytes_down) and first.bytes_down["d0"]
    assert second.bytes_down["d0"] < full  # a delta, not the whole sub-model again


def test_a_stored_cloud_version_loads_back_as_a_model_and_as_a_new_campaigns_weights(tmp_path):
    from eclm.modules import load_checkpoint

    cfg = config(tmp_path)
    cloud = CloudService(cfg)
    cloud.pretrain()
    store = CampaignStore.create(cfg)
    snapshot = cloud.snapshot()
    store.save_cloud(snapshot)
    path = store.cloud_path(snapshot.version)
    b, info = cfg.backbone, cloud.info()

    model = load_checkpoint(path, info.arch, b.modules_per_layer, cfg.input_size, b.selector_width, b.selector_dim)
    x = torch.rand(4, *cfg.input_size)
    torch.testing.assert_close(model(x), cloud.model.eval()(x), rtol=0, atol=0)

    again = CloudService(cfg.model_copy(update={"backbone": b.model_copy(update={"weights_path": path})}))
    assert again.state_digest() == cloud.state_digest()
    assert all(torch.equal(v, cloud.model.selector.state_dict()[k]) for k, v in again.model.selector.state_dict().items())
