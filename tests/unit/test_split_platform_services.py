"""Split learning through the Ray-free cloud and edge services (the methods the actors expose).

The driver loop here is the call sequence of ``eclm.runtime.split_round`` with direct calls.
"""

from __future__ import annotations

import pytest
import torch

from eclm.config import ConfigError, PlatformConfig
from eclm.modules import unpack_state
from eclm.pipelines.cloud_service import CloudService
from eclm.pipelines.edge_service import EdgeService

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
    text = cfg.model_dump_json()
    return CloudService(text), {n: EdgeService(text, i) for i, n in enumerate(["d0", "d1", "d2"])}


def prepare(cloud: CloudService, edges: dict, names: list[str], **resources) -> dict:
    selector = cloud.selector_payload()
    devices = []
    for n in names:
        hello = edges[n].split_hello()
        hello["resources"] = dict(hello["resources"], **resources.get(n, {}))
        devices.append({"name": n, "importance": edges[n].summary(selector)["importance"], **hello})
    return cloud.split_prepare(devices)


def run_round(cloud: CloudService, edges: dict, info: dict, epochs: int) -> list[dict]:
    """Begin, train ``epochs`` epochs (forward/server step/backward, aggregate, load)."""
    order = sorted(info["devices"], key=lambda n: info["devices"][n]["index"])
    for n in order:
        edges[n].split_begin(info["devices"][n]["payload"], info["client_sizes"], info["devices"][n]["index"])
    summaries = []
    for epoch in range(epochs):
        pending = {}
        for step, row in enumerate(cloud.split_epoch_plan(epoch)):
            active = [k for k, count in enumerate(row) if count > 0]
            messages = [edges[order[k]].split_forward(epoch, step, pending.pop(k, None)) for k in active]
            for k in list(pending):
                edges[order[k]].split_backward(pending.pop(k))
            pending.update(zip(active, cloud.split_server_step(epoch, step, *messages)[:-1], strict=True))
        for k, grad in pending.items():
            edges[order[k]].split_backward(grad)
        out = cloud.split_aggregate(*[edges[n].split_epoch_end() for n in order])
        for k, n in enumerate(order):
            edges[n].split_load(out[k])
        summaries.append(out[-1])
    return summaries


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
    importance = edges["d2"].summary(cloud.selector_payload())["importance"]
    route = cloud.split_route("d2", importance, resources)
    assert route["mode"] == mode, route["reason"]


def test_services_run_a_split_round_that_learns_and_ends_with_one_model(services) -> None:
    cloud, edges = services
    info = prepare(cloud, edges, ["d0", "d1"])
    assert set(info["devices"]) == {"d0", "d1"} and not info["excluded"]
    assert info["plan"]["method"] == "edgesplit" and len(info["stages"]) == 10

    summaries = run_round(cloud, edges, info, epochs=3)

    losses = [s["loss"] for s in summaries]
    assert losses[-1] < losses[0]
    server_state = cloud._split.sub.state_dict()
    for n in ("d0", "d1"):
        device_state, _, _ = unpack_state(edges[n]._split.state_payload())
        assert device_state and all(torch.equal(v, server_state[k]) for k, v in device_state.items())
    before = cloud.cloud_state_digest()
    uploads = cloud.split_finish()
    assert cloud.cloud_state_digest() == before  # the server trained a private copy
    report = cloud.merge(list(uploads.values()))
    bad = ("integrity", "malformed", "unknown")
    problems = {d: r for d, r in report["rejected"].items() if r.startswith(bad)}
    assert not problems and set(report["accepted"]) | set(report["rejected"]) == {"d0", "d1"}
    # one aggregated upload for both devices: screened once, not mistaken for colluding copies
    assert report["screen"]["d0"] == report["screen"]["d1"] and not report["screen"]["d0"]["identical_to"]


def test_devices_no_cut_fits_are_excluded_with_the_reason(services) -> None:
    cloud, edges = services
    info = prepare(cloud, edges, ["d0", "d1"], d0={"memory_mb": 1e-4})
    assert set(info["devices"]) == {"d1"} and "no cut fits" in info["excluded"]["d0"]
    cloud.split_abort()
    with pytest.raises(ValueError, match="no device can take part"):
        prepare(cloud, edges, ["d0"], d0={"memory_mb": 1e-4})


def test_step_synchronisation_is_refused_by_the_actor_protocol(tmp_path) -> None:
    cfg = config(tmp_path, client_sync="step")
    cloud = CloudService(cfg.model_dump_json())
    edges = {"d0": EdgeService(cfg.model_dump_json(), 0)}
    with pytest.raises(ValueError, match="client_sync"):
        prepare(cloud, edges, ["d0"])


def test_edge_refuses_split_calls_without_a_session(services) -> None:
    _, edges = services
    with pytest.raises(RuntimeError, match="no split session"):
        edges["d2"].split_forward(0, 0)
