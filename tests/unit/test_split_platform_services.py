"""Split learning through the Ray-free cloud and edge services (the methods the actors expose).

Rounds run through :func:`eclm.campaign.split_round.run_split_round`, the platform's one split
engine, bound to the services in this process.
"""

from __future__ import annotations

import math

import pytest
import torch

from eclm.campaign.local import LocalFleet
from eclm.campaign.messages import AttributedUpdate
from eclm.campaign.split_round import run_split_round
from eclm.config import ConfigError, PlatformConfig
from eclm.modules import unpack_state
from eclm.pipelines.cloud_service import CloudService
from eclm.pipelines.edge_service import EdgeService
from eclm.split import uniform_cut_plan

torch.set_num_threads(1)


def config(tmp_path, **split) -> PlatformConfig:
    return PlatformConfig.from_dict({
        "name": "split-unit", "workdir": str(tmp_path),
        "data": {"source": "digits", "image_size": 16, "num_devices": 3, "classes_per_device": 3,
                 "samples_per_device": [40, 60]},
        "backbone": {"name": "resnet18", "kwargs": {"channels": [8, 8, 16, 16]}, "modules_per_layer": 2},
        "devices": [{"name": "d0", "mode": "split", "gflops": 2.0, "bandwidth_mbps": 10},
                    {"name": "d1", "mode": "split", "gflops": 20.0, "bandwidth_mbps": 50}, {"name": "d2"}],
        "split": {"global_batch": 16, "lr": 0.05, "epochs": 3, **split},
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path}/mlruns.db"},
    })


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    cfg = config(tmp_path_factory.mktemp("split"))
    return CloudService(cfg), {n: EdgeService(cfg, i) for i, n in enumerate(["d0", "d1", "d2"])}


def prepare(cloud: CloudService, edges: dict, names: list[str], **resources) -> dict:
    selector = cloud.selector_payload()
    devices = []
    for n in names:
        hello = edges[n].split_hello()
        hello["resources"] = dict(hello["resources"], **resources.get(n, {}))
        devices.append({"name": n, "importance": [list(r) for r in edges[n].summary(selector).importance], **hello})
    return cloud.split_prepare(devices)


def test_platform_config_carries_split_settings(tmp_path) -> None:
    cfg = config(tmp_path, sampler="fixed_equal", codec={"name": "mask_encoded", "ratio": 0.9, "bits": 2})
    assert cfg.split.sampler == "fixed_equal" and cfg.split.codec.bits == 2
    assert PlatformConfig.model_validate_json(cfg.model_dump_json()).split == cfg.split
    with pytest.raises(ConfigError, match="split.codec"):
        config(tmp_path, codec={"name": "topk"})  # top-k needs a ratio
    with pytest.raises(ConfigError, match="split.cut"):
        config(tmp_path, cut="deep")


@pytest.mark.parametrize(("resources", "mode"), [
    ({"memory_mb": 0.05}, "split"),  # memory is what fails: split learning can help
    ({"memory_mb": None}, "local"),  # unconstrained
    ({"memory_mb": None, "gflops": 1e-9}, "local"),  # compute fails even without a memory limit
])
def test_auto_mode_routes_to_split_only_when_memory_binds(services, resources: dict, mode: str) -> None:
    cloud, edges = services
    summary = edges["d2"].summary(cloud.selector_payload())
    resources = summary.resources.model_copy(update=resources)
    why = cloud.split_route(summary.model_copy(update={"resources": resources}))
    assert ("split" if why is not None else "local") == mode, why


def test_services_run_a_split_round_that_learns_and_ends_with_one_model(services) -> None:
    cloud, edges = services
    fleet = LocalFleet(lambda: cloud, {n: (lambda e=e: e) for n, e in edges.items()})
    selector = cloud.selector_payload()
    summaries = {n: edges[n].summary(selector) for n in ("d0", "d1")}
    before = cloud.state_digest()

    result = run_split_round(fleet, summaries, epochs=3, version=cloud.version, timeout=60)

    assert not result.failures and set(result.uploads) == {"d0", "d1"}
    plan = result.report["plan"]
    assert plan["method"] == "edgesplit" and len(result.report["stages"]) == 10
    assert plan["objective"] == "epoch" and plan["epoch_time"] > 0
    assert result.report["costs"]["profile"] == "timed" and len(result.report["costs"]["call_flops"]) == 10
    losses = [e["loss"] for e in result.report["epochs"]]
    assert losses[-1] < losses[0]
    states = [unpack_state(u.payload)[0] for u in result.uploads.values()]
    assert all(torch.equal(v, states[1][k]) for k, v in states[0].items())  # one aggregated model
    assert cloud.state_digest() == before  # the server trained a private copy
    assert all(m.mode == "split" and m.acc_after is not None for m in result.metrics.values())
    report = cloud.merge([AttributedUpdate(channel=n, issued=result.packages[n].spec, enrolled_classes=edges[n].classes,
                                           update=u) for n, u in result.uploads.items()])
    bad = ("integrity", "malformed", "unknown")
    problems = {d: r for d, r in report.rejected.items() if r.startswith(bad)}
    assert not problems and set(report.accepted) | set(report.rejected) == {"d0", "d1"}


def test_a_cloud_subclass_can_pin_the_plan_of_its_split_rounds(tmp_path_factory, services) -> None:
    class PinnedCloud(CloudService):
        def plan_split_cuts(self, config, costs, devices, total_bandwidth, server_speed, *, client_sizes):
            return uniform_cut_plan(costs, devices, total_bandwidth, server_speed, 7)

    _, edges = services
    info = prepare(PinnedCloud(config(tmp_path_factory.mktemp("pinned"))), edges, ["d0", "d1"])

    assert info["plan"]["method"] == "uniform_cut_7" and info["plan"]["cuts"] == [7, 7]
    assert [info["devices"][n]["cut"] for n in ("d0", "d1")] == [7, 7]


def test_devices_no_cut_fits_are_excluded_with_the_reason(services) -> None:
    cloud, edges = services
    info = prepare(cloud, edges, ["d0", "d1"], d0={"memory_mb": 1e-4})
    assert set(info["devices"]) == {"d1"} and "no cut fits" in info["excluded"]["d0"]
    cloud.split_abort()
    with pytest.raises(ValueError, match="no device can take part"):
        prepare(cloud, edges, ["d0"], d0={"memory_mb": 1e-4})


def test_step_synchronisation_is_refused_when_the_config_loads(tmp_path) -> None:
    assert config(tmp_path, client_sync="epoch").split.client_sync == "epoch"
    with pytest.raises(ConfigError, match="split.client_sync"):
        config(tmp_path, client_sync="step")  # no split engine shares gradients every step


def test_edge_refuses_split_calls_without_a_session(services) -> None:
    _, edges = services
    with pytest.raises(RuntimeError, match="no split session"):
        edges["d2"].split_forward(0, 0)


def test_a_diverged_split_round_is_reported_and_its_uploads_leave_the_cloud_untouched(tmp_path) -> None:
    # training blows up (losses 1.3e3, 9e10, 1.5e32); a fixed cut and FLOP costs keep it independent of timing
    cfg = config(tmp_path, lr=10.0, momentum=0.99, cut_policy="fixed", fixed_cut=1, cost_profile="flops")
    cloud, edges = CloudService(cfg), {n: EdgeService(cfg, i) for i, n in enumerate(["d0", "d1", "d2"])}
    fleet = LocalFleet(lambda: cloud, {n: (lambda e=e: e) for n, e in edges.items()})
    selector = cloud.selector_payload()
    summaries = {n: edges[n].summary(selector) for n in ("d0", "d1")}
    before = cloud.state_digest()

    result = run_split_round(fleet, summaries, epochs=3, version=cloud.version, timeout=60)

    assert not result.failures and result.report["diverged"] == ["d0", "d1"]
    assert all(m.loss_after is None for m in result.metrics.values())
    assert result.round_metrics["split/diverged_devices"] == 2
    assert all(math.isfinite(v) for v in result.round_metrics.values())
    outcome = cloud.merge([AttributedUpdate(channel=n, issued=result.packages[n].spec,
                                            enrolled_classes=edges[n].classes, update=u)
                           for n, u in result.uploads.items()])
    assert outcome.decision == "reject" and set(outcome.rejected) == {"d0", "d1"}
    assert all(r.startswith("integrity") for r in outcome.rejected.values()), outcome.rejected
    assert cloud.state_digest() == before
