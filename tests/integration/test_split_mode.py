"""Split learning through real Ray actors: the coordinator, and split mode inside a platform cycle."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from torch.nn import functional as F

from eclm.config import PlatformConfig
from eclm.modules import rebuild_submodel, skeleton, unpack_state
from eclm.pipelines.edge_service import EdgeService


def fleet_of(cfg: PlatformConfig):
    from eclm.runtime.ray_fleet import RayFleet

    # built the way the platform builds it: the cloud first, the devices once it is asked to
    fleet = RayFleet(cfg, defer_devices=True)
    assert fleet.devices == {}
    fleet.start_devices()
    handles = {n: fleet.actor(n) for n in fleet.names}
    fleet.start_devices()  # idempotent: no second actor per device
    assert sorted(fleet.devices) == sorted(fleet.names) and all(fleet.actor(n) is h for n, h in handles.items())
    return fleet


def summaries(fleet, names: list[str]) -> dict:
    selector, _ = fleet.gather({"s": fleet.cloud.selector_payload()})
    out, failures = fleet.gather({n: fleet.devices[n].summary(selector["s"]) for n in names})
    assert not failures, failures
    return out


def run(fleet, cfg: PlatformConfig, names: list[str]):
    from eclm.campaign.split_round import run_split_round

    return run_split_round(fleet, summaries(fleet, names), cfg.split.epochs, 0, cfg.ray.call_timeout_s)


def one(fleet, call):
    results, failures = fleet.gather({"x": call})
    assert not failures, failures
    return results["x"]


def test_single_device_split_round_over_actors_equals_a_local_sgd_step(local_ray, tmp_path) -> None:
    cfg = PlatformConfig.from_dict(tiny_config(
        tmp_path, devices=[{"name": "d0", "mode": "split"}, {"name": "d1"}, {"name": "d2"}],
        adaptation={"restrict_to_local_classes": False},
        split={"global_batch": 512, "epochs": 1, "lr": 0.1, "momentum": 0.0, "cut_policy": "fixed",
               "fixed_cut": 4}))
    fleet = fleet_of(cfg)
    start_state, spec, _ = unpack_state(one(fleet, fleet.cloud.model_payload()))
    info = one(fleet, fleet.cloud.info())

    result = run(fleet, cfg, ["d0"])

    assert not result.failures and not result.lost
    # The same step on the composed model, locally: one global batch holds all the device's samples.
    device = EdgeService(cfg, 0)
    x, y = device.stream.train_set().images, device.stream.train_set().labels
    b = cfg.backbone
    skel = skeleton({"name": b.name, "kwargs": dict(b.kwargs, num_classes=info.num_classes, in_chans=3)},
                    b.modules_per_layer, cfg.input_size)
    local = rebuild_submodel(skel, spec, start_state).train()
    opt = torch.optim.SGD(local.parameters(), lr=0.1)
    F.cross_entropy(local(x), y).backward()
    opt.step()
    trained, _, _ = unpack_state(result.uploads["d0"].payload)
    for key, value in local.state_dict().items():
        torch.testing.assert_close(trained[key], value, atol=2e-5, rtol=1e-4, msg=key)
    # Traffic: the identity codec sends exactly 32 bits per activation element.
    per_sample = result.report["costs"]["activation_bytes"][4]
    assert result.round_metrics["split/d0/bits_activations"] == 8 * per_sample * len(x)
    assert result.round_metrics["split/d0/bytes_gradients"] == per_sample * len(x)
    fleet.close()


def test_split_round_over_actors_learns_and_ends_with_one_model(local_ray, tmp_path) -> None:
    cfg = PlatformConfig.from_dict(tiny_config(
        tmp_path, devices=[{"name": "d0", "mode": "split", "gflops": 1.0, "bandwidth_mbps": 5},
                           {"name": "d1", "mode": "split", "gflops": 10.0, "bandwidth_mbps": 50},
                           {"name": "d2"}],
        split={"global_batch": 32, "epochs": 4, "lr": 0.05, "codec": {"name": "mask_encoded", "ratio": 0.9,
                                                                        "bits": 2}}))
    fleet = fleet_of(cfg)
    before = one(fleet, fleet.cloud.state_digest())

    result = run(fleet, cfg, ["d0", "d1"])

    assert not result.failures
    losses = [e["loss"] for e in result.report["epochs"]]
    assert losses[-1] < losses[0]
    states = [unpack_state(result.uploads[n].payload)[0] for n in ("d0", "d1")]
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert one(fleet, fleet.cloud.state_digest()) == before  # only the merge changes the cloud model
    for n in ("d0", "d1"):  # MS at r=0.9, b=2 sends ~5 bits per element instead of 32
        device = result.report["devices"][n]
        samples = result.report["client_sizes"][device["index"]] * 4
        dense_bits = 8 * result.report["costs"]["activation_bytes"][device["cut"]] * samples
        assert 0 < result.round_metrics[f"split/{n}/bits_activations"] < 0.25 * dense_bits
    assert result.round_metrics["split/emulated_seconds"] > 0 and result.round_metrics["split/real_seconds"] > 0
    fleet.close()


def test_platform_cycle_with_a_split_and_a_local_device_completes_and_logs(local_ray, tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    from eclm import Platform

    # d1 is in auto mode with 6 MB: too little to train a derived sub-model locally, enough for a
    # device part at the split batch of 8 -> it trains split; d0 trains locally.
    cfg = tiny_config(tmp_path, devices=[{"name": "d0"}, {"name": "d1", "mode": "auto", "memory_mb": 6,
                                                         "gflops": 2.0, "bandwidth_mbps": 20}],
                      data={"source": "digits", "num_devices": 2, "classes_per_device": 3,
                            "samples_per_device": [60, 80]},
                      split={"global_batch": 8, "epochs": 2, "lr": 0.02})
    with Platform(cfg) as platform:
        result = platform.run_cycle()
        run_id = platform.tracker.run_id

    assert not result.failures
    assert result.device_metrics["d1"].mode == "split" and result.device_metrics["d0"].mode == "local"
    assert result.device_metrics["d1"].acc_after is not None
    assert set(result.merge.accepted) | set(result.merge.rejected) == {"d0", "d1"}
    assert not any(r.startswith(("integrity", "malformed")) for r in result.merge.rejected.values())
    client = MlflowClient(cfg["tracking"]["tracking_uri"])
    logged = client.get_run(run_id).data.metrics
    for key in ("split/real_seconds", "split/emulated_seconds", "split/d1/bits_activations", "split/d1/cut",
                "device/d1/bytes_up", "device/d0/bytes_up"):
        assert key in logged, key
    assert logged["device/d1/bytes_up"] == result.bytes_up["d1"] > logged["split/d1/bits_activations"] / 8
    artifacts = [a.path for a in client.list_artifacts(run_id, "rounds/round_001")]
    assert "rounds/round_001/split_report.json" in artifacts


@pytest.fixture(autouse=True)
def _single_thread() -> None:
    torch.set_num_threads(1)
