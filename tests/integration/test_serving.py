"""Partitioned serving on a real local Ray: exact outputs, a killed stage, a slowed node, the API and CLI.

The first tests share one pool of three stage actors (module fixture ``pool``); each builds its
own :class:`Deployment` on it. The platform and CLI tests start full platforms afterwards (the
``cloud`` resource has one unit, so they run one after the other).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_config

from eclm.modules import modularize, unpack_state
from eclm.runtime.serving import Deployment, StagePool
from eclm.serving import ModelSource, ServingConfig, build_chain
from eclm.tracking import CampaignTracker

pytestmark = pytest.mark.integration

INPUT = (3, 32, 32)
BASE = dict(node_cpu_shares=[1.0, 0.6, 0.4], node_memory_bytes=None, emulation_scale=0.5, micro_batch_size=2,
            max_in_flight=8, monitor_interval_s=0.2, repartition_cooldown_s=0.3, profile_repeats=3,
            stage_actor_cpus=0.05, repartition=False, activation_codec="float32")

# Platform tests need one device only: fewer actors to start on a 2-core machine.
ONE_DEVICE = {"data.num_devices": 1, "devices": [{"name": "d0"}]}


def serving_config(**kw) -> ServingConfig:
    return ServingConfig(**(BASE | kw))


@pytest.fixture(scope="module")
def local_ray():
    """This module's own local Ray (overrides conftest's): ``address="local"`` always starts a fresh
    instance, even when another Ray cluster runs on the machine (ray.init() would join that one)."""
    import ray

    from eclm.resources import CLOUD_RESOURCE, EDGE_RESOURCE

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, resources={CLOUD_RESOURCE: 1, EDGE_RESOURCE: 8}, include_dashboard=False,
             object_store_memory=300 * 2**20, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return modularize("resnet18", modules_per_layer=2, input_size=INPUT, num_classes=10,
                      channels=[8, 16, 32, 64]).eval()


@pytest.fixture(scope="module")
def source(model):
    return ModelSource.from_modular(model, name="cloud")


@pytest.fixture(scope="module")
def reference(model):
    full = model.extract(model.full_spec()).eval()

    def run(x):
        with torch.no_grad():
            return full(x)
    return run


@pytest.fixture(scope="module")
def pool(local_ray):
    p = StagePool(serving_config())
    yield p
    p.close()


def inputs(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, *INPUT, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("settings", [
    dict(partitioner="dp"),
    dict(partitioner="dp", node_cpu_shares=[0.02, 1.0, 1.0]),  # node 0 too slow: it only relays the input
    dict(partitioner="proportional", objective="latency"),
    dict(partitioner="monolithic", micro_batch_size=1),
    dict(placement="replicas", scheduler="amp4ec"),
    dict(placement="replicas", scheduler="round_robin", micro_batch_size=1, max_in_flight=3),
    dict(partitioner="dp", activation_codec="float16", node_cpu_shares=[0.3, 0.3, 0.3]),
    dict(partitioner="dp", micro_batch_policy="auto", micro_batch_size=4),
], ids=["dp", "dp-relay", "proportional", "monolithic", "replicas-amp4ec", "replicas-rr", "dp-float16",
        "dp-auto-micro-batch"])
def test_served_outputs_equal_the_monolithic_model(pool, source, reference, settings):
    x = inputs(12)
    with Deployment(source, serving_config(**settings), pool=pool, name="exact") as d:
        out, timings = d.infer(x, timeout=120)
        stats = d.stats()
    if settings.get("node_cpu_shares") and "activation_codec" not in settings:
        assert d.plan.boundaries[1] == 0
    if settings.get("activation_codec") == "float16":
        # Half-precision activations between stages: close to, not equal to, the float32 model.
        assert d.plan.codec == "float16" and len(d.plan.stages) > 1
        assert torch.allclose(out, reference(x), rtol=1e-2, atol=1e-2)
        assert any(s["codec"] == "float16" for s in timings[0]["stages"][:-1])
    else:
        assert torch.allclose(out, reference(x), atol=1e-5)
    if settings.get("micro_batch_policy") == "auto":
        # The planner profiled sizes 1, 2, 4 and serves the one it chose.
        choice = d.events[0]["micro_batch_choice"]
        assert sorted(choice["rates"]) == [1, 2, 4] and d.config.micro_batch_size in (1, 2, 4)
        assert {t["micro_batch"] for t in timings} <= {d.config.micro_batch_size, 12 % d.config.micro_batch_size}
    assert len(timings) == 12 and all(t["latency_s"] > 0 and t["stages"] for t in timings)
    assert stats["requests"] == 12 and stats["failed"] == 0
    if settings.get("placement") == "replicas":
        assert len({t["route"] for t in timings}) >= 2  # the scheduler spread requests over replicas
    else:
        # The stages a request visited cover the chain exactly once, in order.
        blocks = [(s["start"], s["stop"]) for s in timings[0]["stages"]]
        assert blocks[0][0] == 0 and blocks[-1][1] == d.n_blocks
        assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:], strict=False))
        if d.plan.boundaries[1] == 0:
            assert blocks[0] == (0, 0) and timings[0]["stages"][0]["node"] == 0  # the relay hop


def test_single_requests_through_handles(pool, source, reference):
    x = inputs(5, seed=2)
    with Deployment(source, serving_config(), pool=pool, name="handles") as d:
        handles = [d.submit(row) for row in x]
        outs = torch.stack([h.result(timeout=60) for h in handles])
        assert all(h.done() for h in handles)
        assert handles[0].timings()["request_id"] == handles[0].request_id
        with pytest.raises(ValueError, match="shape"):
            d.submit(torch.zeros(3, 16, 16))
    assert torch.allclose(outs, reference(x), atol=1e-5)
    with pytest.raises(RuntimeError, match="closed"):
        d.submit(x[0])


def test_restart_clock_counts_timeline_and_events_from_after_a_warm_up(pool, source):
    x = inputs(8, seed=5)
    with Deployment(source, serving_config(), pool=pool, name="clock") as d:
        d.infer(x, timeout=120)  # warm-up, not to be counted
        time.sleep(0.6)  # more than one timeline window between deployment and restart
        deployed_at = d.started_at
        start = d.restart_clock()
        handles = d.submit_many(x)
        d.wait(handles, timeout=120)
        d.set_cpu_share(0, 0.5)
        line = d.timeline(0.5, [h.request_id for h in handles])
        finish = [d.ledger.records[h.request_id].finished_at for h in handles]
        events = list(d.events)
    assert d.started_at == start and start - deployed_at >= 0.6
    assert events[0]["kind"] == "deploy" and events[0]["time_s"] <= -0.6  # kept its place, before the restart
    assert events[-1]["kind"] == "cpu_share" and 0 <= events[-1]["time_s"] <= time.time() - start
    assert len(line["time_s"]) == max(1, math.ceil((max(finish) - start) / 0.5))  # windows from the restart
    assert sum(rps * 0.5 for rps in line["throughput_rps"]) == pytest.approx(8)


def test_killed_stage_actor_is_replaced_and_no_request_is_lost(local_ray, pool, source, reference):
    x = inputs(30, seed=3)
    with Deployment(source, serving_config(), pool=pool, name="kill") as d:
        victim = d.plan.stages[-1].node if len(d.plan.stages) > 1 else d.plan.stages[0].node
        handles = d.submit_many(x)  # the first micro-batches are in flight right away
        local_ray.kill(d.stage_actors[victim], no_restart=True)
        d.wait(handles, timeout=240)
        out = torch.stack([h.result() for h in handles])
        replaced = [e for e in d.events if e["kind"] == "replace"]
        retried = d.ledger.retries
        # The replacement serves later requests too.
        again, _ = d.infer(x[:4], timeout=60)
    assert torch.allclose(out, reference(x), atol=1e-5)
    assert torch.allclose(again, reference(x[:4]), atol=1e-5)
    assert [e["node"] for e in replaced] == [victim]
    assert retried >= 1
    assert all(h.timings()["error"] is None for h in handles)


def test_node_slowdown_triggers_a_logged_repartition(pool, source, reference, tmp_path):
    tracker = CampaignTracker(tracking_uri=f"sqlite:///{tmp_path}/mlruns.db", workdir=tmp_path)
    tracker.start({"test": "serving"}, run_name="serving-itest")
    cfg = serving_config(node_cpu_shares=[1.0, 1.0, 1.0], repartition=True, repartition_min_gain=0.1)
    x = inputs(16, seed=4)
    d = Deployment(source, cfg, pool=pool, tracker=tracker, name="slow")
    try:
        for _ in range(2):  # settle the per-node baselines
            d.infer(x, timeout=120)
        # No assertion that nothing re-partitioned yet: the other test worker's load on the same
        # two cores is a real slowdown the monitor may act on (seen in CI: a node 1.31x slower,
        # gain 12.8%). Jitter within the threshold is a unit test of SlowdownTracker.
        before = len(d.events)
        busiest = max(d.plan.stages, key=lambda s: s.stop - s.start).node
        held_before = len(d.plan.blocks_of(busiest))
        d.set_cpu_share(busiest, 0.1)
        for _ in range(20):
            out, _ = d.infer(x, timeout=120)
            if any(e["kind"] == "repartition" for e in d.events[before:]):
                break
        out, _ = d.infer(x, timeout=120)  # served correctly on the new cut
        events = [e for e in d.events[before:] if e["kind"] == "repartition"]
    finally:
        d.close()
        tracker.end()
    assert events, f"no re-partition after the slowdown; events: {d.events}"
    assert events[0]["from"] != events[0]["to"]
    # The slowed node is the one the re-partition saw as slowest, and it now holds fewer blocks.
    slowdown = events[0]["slowdown"]
    assert slowdown.index(max(slowdown)) == busiest
    assert len(d.plan.blocks_of(busiest)) < held_before
    assert torch.allclose(out, reference(x), atol=1e-5)
    records = [json.loads(line) for line in Path(tracker.journal_path).read_text().splitlines()]
    artifacts = {r["data"]["artifact_path"] for r in records if r["kind"] == "artifact"}
    assert {"serving/slow/plan.json", "serving/slow/events/repartition_001.json",
            "serving/slow/session.json", "serving/slow/throughput.png"} <= artifacts
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns.db")
    metrics = client.get_run(tracker.run_id).data.metrics
    assert metrics["serving/slow/repartitions"] >= 1 and metrics["serving/slow/latency_ms_p95"] > 0


def _rebuild(payload: bytes, d: Deployment):
    chain = build_chain(d.source.architecture(), payload)

    def run(x):
        with torch.no_grad():
            for _, block in chain:
                x = block(x)
        return x
    return run


def test_platform_serves_the_cloud_model_and_a_device_sub_model(local_ray, tmp_path):
    from eclm.platform import Platform

    cfg = tiny_config(tmp_path, **ONE_DEVICE, **{"adaptation.epochs": 1})
    with Platform(cfg) as p:
        x = torch.randn(6, *p.cfg.input_size)
        with p.serve("cloud", nodes=[1.0, 0.5], objective="latency", emulation_scale=0.5, micro_batch_size=2,
                     max_in_flight=4, stage_actor_cpus=0.05, repartition=False) as d:
            out, _ = d.infer(x, timeout=120)
            ref = _rebuild(local_ray.get(p.fleet.cloud.actor.model_payload.remote()), d)(x)
            assert d.config.objective == "latency" and d.config.n_nodes == 2
        assert torch.allclose(out, ref, atol=1e-5)
        with pytest.raises(ValueError, match="no sub-model"):
            p.serve("d0")
        with pytest.raises(ValueError, match="devices"):
            p.serve("nobody")
        p.run_cycle(["d0"])
        with p.serve("d0", nodes=[{"cpu_share": 0.8}, {"cpu_share": 0.4}], scheduler="least_loaded",
                     placement="replicas", emulation_scale=0.5, stage_actor_cpus=0.05, repartition=False) as d:
            out, _ = d.infer(x, timeout=120)
            payload = local_ray.get(p.fleet.actor("d0").snapshot_model.remote())
            ref = _rebuild(payload, d)(x)
            full = _rebuild(local_ray.get(p.fleet.cloud.actor.model_payload.remote()), d)(x)
        assert torch.allclose(out, ref, atol=1e-5)
        assert unpack_state(payload)[1] == p.history[-1].specs["d0"]  # its own spec
        assert not torch.allclose(out, full, atol=1e-4)  # the device's adapted sub-model, not the cloud's
        journal = [json.loads(line) for line in Path(p.tracker.journal_path).read_text().splitlines()]
    artifacts = {r["data"]["artifact_path"] for r in journal if r["kind"] == "artifact"}
    assert {"serving/cloud-1/plan.json", "serving/d0-2/plan.json", "serving/d0-2/session.json"} <= artifacts


def test_cli_serve(local_ray, tmp_path, capfd):
    from eclm.cli import main

    raw = tiny_config(tmp_path, **ONE_DEVICE)
    raw["serving"] = {"node_cpu_shares": [1.0, 0.6, 0.4], "emulation_scale": 0.5, "micro_batch_size": 2,
                      "stage_actor_cpus": 0.05, "profile_repeats": 2}
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["serve", "--config", str(path), "--requests", "6"]) == 0
    out = capfd.readouterr().out
    assert "served 6 requests (0 failed" in out and "plan [0," in out
    raw["serving"]["micro_batch_sise"] = 2
    path.write_text(yaml.safe_dump(raw))
    assert main(["serve", "--config", str(path)]) == 2
    assert "serving.micro_batch_sise" in capfd.readouterr().err
