"""Campaigns on a real local Ray with real MLflow (SQLite in a temp folder).

Two platforms share the module's Ray, one after the other (the ``cloud`` resource has one unit):

* ``pooled_run``: one edge pool hosting all three devices, MLflow unreachable; it runs to the
  end and shuts down inside the fixture, leaving its journal behind.
* ``campaign``: one actor per device, MLflow on SQLite; it stays up for the whole module and is
  reused by later tests (malformed uploads, local swap, drift trigger, a killed actor), so the
  test order in this file matters: the actor-killing test comes last.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_config

from eclm.campaign.messages import AttributedUpdate, DeviceUpdate
from eclm.modules import SubModelSpec, pack_state, unpack_state
from eclm.pipelines.triggers import Decision, DriftTrigger, Observation, PeriodicTrigger, Trigger
from eclm.platform import Platform
from eclm.tracking.flatten import config_params

pytestmark = pytest.mark.integration

DEVICES = ["d0", "d1", "d2"]
ROUNDS = (1, 2)  # the campaign's periodic cycles
PER_ROUND_DEVICE_KEYS = ("acc_before", "acc_after", "bytes_up", "bytes_down", "params", "drift")
DECISION_CODE = {"accept": 2, "partial": 1, "reject": 0}


def _journal(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _metric_keys_by_step(records: list[dict], prefix: str = "") -> dict[int, set[str]]:
    keys: dict[int, set[str]] = {}
    for r in records:
        if r["kind"] == "metrics":
            keys.setdefault(r["step"], set()).update(k for k in r["data"] if k.startswith(prefix))
    return keys


@pytest.fixture(scope="module")
def pooled_run(local_ray, tmp_path_factory):
    """A complete pooled campaign whose MLflow server does not exist (finished before ``campaign``)."""
    tmp = tmp_path_factory.mktemp("pooled")
    cfg = tiny_config(tmp, **{"ray.edge_pool_size": 1, "tracking.tracking_uri": "http://127.0.0.1:1"})
    with Platform(cfg) as p:
        p.pretrain()
        history = p.run()
        out = SimpleNamespace(platform=p, history=history, degraded=p.tracker.degraded,
                              journal=p.tracker.journal_path, fleet=p.fleet,
                              actors={n: p.fleet.actor(n) for n in DEVICES})
    return out


@pytest.fixture(scope="module")
def campaign(local_ray, pooled_run, tmp_path_factory):
    """Pretrained platform after two periodic cycles, one actor per device; shared by the module."""
    tmp = tmp_path_factory.mktemp("campaign")
    cfg = tiny_config(tmp)
    p = Platform(cfg).start()
    try:
        p.pretrain()
        results = p.run()
        # Later tests log more (e.g. swaps at the current round): keep the campaign's own record.
        device_keys = _metric_keys_by_step(_journal(p.tracker.journal_path), "device/")
        yield SimpleNamespace(platform=p, results=results, uri=cfg["tracking"]["tracking_uri"], tmp=tmp,
                              device_keys=device_keys)
    finally:
        p.shutdown()


class _Published:
    """An ``MlflowClient`` whose every query first waits for the platform's background publisher
    (``tracking.background``, on by default): what a test did is in MLflow before it looks."""

    def __init__(self, client, tracker) -> None:
        self._client, self._tracker = client, tracker

    def __getattr__(self, name: str):
        self._tracker.flush()
        return getattr(self._client, name)


@pytest.fixture(scope="module")
def mlflow_client(campaign):
    from mlflow.tracking import MlflowClient

    assert campaign.platform.tracker.background  # the platform's default
    return _Published(MlflowClient(campaign.uri), campaign.platform.tracker)


def _history(client, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def _artifact(client, run_id: str, path: str, tmp: Path) -> bytes:
    local = client.download_artifacts(run_id, path, str(tmp))
    return Path(local).read_bytes()


# ---------------------------------------------------------------------- the campaign itself
def test_campaign_runs_one_edge_actor_per_device(campaign):
    import ray

    p = campaign.platform
    assert [r.round for r in campaign.results] == list(ROUNDS)
    assert all(r.devices == DEVICES and not r.failures for r in campaign.results)
    assert all(set(r.device_metrics) == set(DEVICES) for r in campaign.results)
    ids = {n: p.fleet.actor(n)._actor_id.hex() for n in DEVICES}
    assert len(set(ids.values())) == 3  # three distinct actors, not a pool
    names = {n: ray.get(p.fleet.actor(n).ping.remote()) for n in DEVICES}
    assert names == {n: n for n in DEVICES}


def test_the_cloud_screens_uploads_as_they_arrive_over_ray(campaign):
    # the first upload of a cycle always goes to the cloud at once; later ones join the next call
    # or, if still waiting when the last device answers, are screened by the merge itself
    screened = [int(r.merge.details.get("screened_on_arrival", 0)) for r in campaign.results]
    assert all(1 <= n <= len(DEVICES) for n in screened), screened


def test_mlflow_holds_the_flattened_config_as_params(campaign, mlflow_client):
    p = campaign.platform
    run = mlflow_client.get_run(p.tracker.run_id)
    expected = config_params(p.cfg.model_dump(mode="json"))
    assert expected.items() <= run.data.params.items()
    assert run.data.params["adaptation.epochs"] == "3"
    assert run.data.params["data.num_devices"] == "3"
    assert run.data.params["backbone.modules_per_layer"] == "2"


@pytest.mark.parametrize("key", PER_ROUND_DEVICE_KEYS)
def test_mlflow_holds_per_round_metrics_for_every_device(campaign, mlflow_client, key):
    run_id = campaign.platform.tracker.run_id
    for n in DEVICES:
        hist = _history(mlflow_client, run_id, f"device/{n}/{key}")
        assert set(ROUNDS) <= set(hist), (n, key, hist)
        for res in campaign.results:
            if key in ("bytes_up", "bytes_down"):
                expected = getattr(res, key)[n]
            else:
                expected = getattr(res.device_metrics[n], key)
            assert hist[res.round] == pytest.approx(expected, rel=1e-6), (n, key, res.round)


def test_mlflow_holds_cloud_and_merge_metrics_with_step_equal_round(campaign, mlflow_client):
    run_id = campaign.platform.tracker.run_id
    val = _history(mlflow_client, run_id, "cloud/val_acc")
    decision = _history(mlflow_client, run_id, "merge/decision")
    assert {0, *ROUNDS} <= set(val) and set(ROUNDS) <= set(decision)
    for res in campaign.results:
        assert val[res.round] == pytest.approx(res.cloud_val_acc)
        assert decision[res.round] == DECISION_CODE[res.merge.decision]
    assert 0.0 < val[0] <= 1.0  # the offline stage learned something before round 1


def test_traffic_is_counted_per_device_and_direction(campaign):
    first = campaign.results[0]
    for res in campaign.results:
        for n in DEVICES:
            # Up (docs/method.md): only what the device trained (a budgeted subset of its modules and
            # its classes' rows), as int8 deltas: something, and under one byte per held parameter.
            m = res.device_metrics[n]
            assert m.trained_params is not None and 0 < m.trained_params < m.params
            assert 0 < res.bytes_up[n] < m.params
            # Down always carries the selector.
            assert res.bytes_down[n] > 0
    for n in DEVICES:
        # Round 1: nobody holds a sub-model yet, so down = selector + the whole sub-model.
        assert first.bytes_down[n] > first.bytes_up[n]


def test_round_artifacts_exist(campaign, mlflow_client):
    run_id = campaign.platform.tracker.run_id
    for res in campaign.results:
        folder = f"rounds/round_{res.round:03d}"
        listed = {Path(a.path).name for a in mlflow_client.list_artifacts(run_id, folder)}
        assert {"merge_report.json", "accuracy.png", "module_usage.png"} <= listed
        report = json.loads(_artifact(mlflow_client, run_id, f"{folder}/merge_report.json", campaign.tmp / "dl"))
        assert report["round"] == res.round and report["decision"] == res.merge.decision
        assert report["reason"] and set(report["specs"]) == set(DEVICES)
        for png in ("accuracy.png", "module_usage.png"):
            assert _artifact(mlflow_client, run_id, f"{folder}/{png}", campaign.tmp / "dl")[:8] == b"\x89PNG\r\n\x1a\n"


def test_adaptation_beats_the_drifted_starting_point(campaign):
    before = [r.device_metrics[n].acc_before for r in campaign.results for n in DEVICES]
    after = [r.device_metrics[n].acc_after for r in campaign.results for n in DEVICES]
    assert all(0.0 <= a <= 1.0 for a in before + after)
    assert sum(after) / len(after) > sum(before) / len(before) + 0.05, (before, after)


def test_accepted_versions_are_registered(campaign, mlflow_client):
    p = campaign.platform
    versions = [v for v in mlflow_client.search_model_versions(f"name='{p.cfg.tracking.registered_model_name}'")
                if v.run_id == p.tracker.run_id]
    accepted = sum(r.merge.changed for r in campaign.results)
    assert len(versions) == 1 + accepted  # version 0 after the offline stage, then every accepted merge
    tags = {v.tags["eclm.version_tag"] for v in versions}
    assert "v0000" in tags


# ---------------------------------------------------------------------- malformed uploads
def _mutations(state: dict[str, torch.Tensor]):
    block = next(k for k in state if k.startswith("layer1.0.conv1.weight"))

    def nan(s):
        s[block] = s[block].clone()
        s[block].view(-1)[0] = float("nan")

    def shape(s):
        w = s["fc.weight"]
        s["fc.weight"] = torch.zeros(w.shape[0] + 1, w.shape[1])

    def huge(s):
        s.update({k: v * 1e3 for k, v in s.items() if v.is_floating_point()})

    return {"nan": (nan, "non-finite values"), "wrong shape": (shape, "fc.weight: shape"),
            "huge norm": (huge, "exceeds bound")}


def _device_state(p, device: str):
    state, spec, _ = unpack_state(_one(p, p.fleet.devices[device].snapshot_model()))
    return state, spec, _one(p, p.fleet.devices[device].summary(None))


def _one(p, pending):
    results, failures = p.fleet.gather({"x": pending})
    assert not failures, failures
    return results["x"]


def _merge(p, uploads: list[tuple[str, bytes]]):
    items = []
    for device, payload in uploads:
        summary = _one(p, p.fleet.devices[device].summary(None))
        update = DeviceUpdate(device=device, payload=payload, importance=summary.importance,
                              num_samples=summary.num_samples, classes=summary.classes)
        items.append(AttributedUpdate(channel=device, issued=summary.held.spec, enrolled_classes=summary.classes,
                                      update=update))
    return _one(p, p.fleet.cloud.merge(items))


def test_malformed_uploads_are_rejected_and_the_cloud_stays_bit_identical(campaign):
    p = campaign.platform
    state, spec, _ = _device_state(p, "d0")
    uploads: dict[str, tuple[bytes, str]] = {}
    for case, (mutate, reason) in _mutations(state).items():
        s = dict(state)
        mutate(s)
        uploads[case] = (pack_state(s, spec), reason)
    uploads["garbage bytes"] = (b"\x07not a safetensors payload at all", "malformed upload")
    uploads["no spec"] = (pack_state(state), "carries no sub-model spec")
    foreign = SubModelSpec(model_id="0" * 16, groups=spec.groups)
    uploads["foreign spec"] = (pack_state(state, foreign), "spec is for model")

    for case, (payload, reason) in uploads.items():
        digest, version = p.cloud_digest(), p.state.version
        report = _merge(p, [("d0", payload)])
        assert report.decision == "reject", case
        assert reason in report.rejected["d0"], (case, report.rejected)
        assert report.version == version, case
        assert p.cloud_digest() == digest, case


def test_a_malformed_upload_does_not_sink_an_honest_one(campaign):
    p = campaign.platform
    uploads = []
    for device, poison in (("d0", True), ("d2", False)):
        state, spec, _ = _device_state(p, device)
        if poison:
            state = {k: v * float("nan") if v.is_floating_point() else v for k, v in state.items()}
        uploads.append((device, pack_state(state, spec)))
    digest, version = p.cloud_digest(), p.state.version

    report = _merge(p, uploads)

    assert report.rejected["d0"].startswith("integrity:")
    if report.changed:
        assert report.cloud_acc_before is not None  # the honest update reached evaluation
        assert report.accepted == ("d2",) and report.version == version + 1 and p.cloud_digest() != digest
        p.coordinator._commit_version(_one(p, p.fleet.cloud.snapshot()), None)  # keep the store in step
    else:
        # rejected on its own account (the screen, a quarantine the campaign's rounds started, or the
        # validation; which one depends on the sub-models the devices' measured resources gave them),
        # never with d0's reason
        assert report.rejected["d2"].startswith(("harmful:", "screen:", "quarantined:")), report.rejected
        assert p.cloud_digest() == digest


# ---------------------------------------------------------------------- resource change
@pytest.mark.parametrize(("device", "drop"), [("d0", {"params_fraction": 0.5}), ("d2", {"bandwidth_mbps": 0.1})])
def test_a_resource_drop_swaps_to_a_smaller_submodel_locally(campaign, device, drop):
    p = campaign.platform
    held = campaign.results[-1].specs[device]
    out = p.shrink_device(device, **drop)
    assert out.params_after < out.params_before
    assert held.contains(out.spec) and out.spec != held
    # The device really holds the smaller model now.
    _, spec_now, _ = _device_state(p, device)
    assert spec_now == out.spec == p.state.held[device].spec
    assert _one(p, p.fleet.devices[device].profile()).as_dict().items() >= drop.items()


def test_a_resource_drop_seen_at_a_step_swaps_automatically(campaign, mlflow_client):
    p = campaign.platform
    held = campaign.results[-1].specs["d1"]  # d1 was configured at 0.6
    p.set_device_resources("d1", params_fraction=0.3)
    p.observe()
    _, spec_now, _ = _device_state(p, "d1")
    assert held.contains(spec_now) and spec_now != held
    run_id = p.tracker.run_id
    swaps = [a.path for a in mlflow_client.list_artifacts(run_id, "swaps")]
    assert any(path.endswith(f"step_{p.state.step:04d}_d1.json") for path in swaps), swaps
    after = _history(mlflow_client, run_id, "device/d1/params_after_swap")
    assert after and after[p.state.round] < campaign.results[-1].device_metrics["d1"].params


# ---------------------------------------------------------------------- triggers
class _MidpointDrift(Trigger):
    """A DriftTrigger whose threshold sits between the lowest and highest score observed, so only
    some devices exceed it (the scores are not known before the step)."""

    def __init__(self) -> None:
        self.observed: dict[str, float] = {}
        self.threshold = math.nan

    def decide(self, obs: Observation) -> Decision:
        self.observed = dict(obs.drift_scores)
        self.threshold = (min(self.observed.values()) + max(self.observed.values())) / 2
        return DriftTrigger(self.threshold).decide(obs)

    def reset(self) -> None:
        self.observed = {}


def test_drift_trigger_adapts_only_the_drifted_devices(campaign, mlflow_client):
    p = campaign.platform
    trigger = _MidpointDrift()
    p.schedule(trigger)
    rounds_before = p.state.round
    ran = p.run(steps=1)
    p.schedule(PeriodicTrigger(every_steps=1))

    scores = trigger.observed
    assert set(scores) == set(DEVICES)
    assert max(scores.values()) > min(scores.values()), f"all devices drifted alike: {scores}"
    expected = [n for n, s in scores.items() if s > trigger.threshold]
    assert 0 < len(expected) < len(DEVICES)
    assert len(ran) == 1 and p.state.round == rounds_before + 1
    res = ran[0]
    assert res.devices == expected
    assert set(res.device_metrics) == set(expected) and set(res.bytes_down) == set(expected)
    report = json.loads(_artifact(mlflow_client, p.tracker.run_id, f"rounds/round_{res.round:03d}/merge_report.json",
                                  campaign.tmp / "dl-trigger"))
    assert report["trigger_reason"].startswith("drift:") and all(n in report["trigger_reason"] for n in expected)


def test_a_drift_trigger_nobody_exceeds_runs_no_cycle(campaign):
    p = campaign.platform
    p.schedule(DriftTrigger(threshold=1e9))
    rounds_before, steps_before = p.state.round, p.state.step
    assert p.run(steps=1) == []
    p.schedule(PeriodicTrigger(every_steps=1))
    assert p.state.round == rounds_before and p.state.step == steps_before + 1


# ---------------------------------------------------------------------- pooled, MLflow down
def test_unreachable_mlflow_degrades_to_the_journal_and_the_campaign_completes(pooled_run):
    assert pooled_run.degraded
    assert [len(r.device_metrics) for r in pooled_run.history] == [3, 3]
    assert all(not r.failures for r in pooled_run.history)
    records = _journal(pooled_run.journal)
    kinds = [r["kind"] for r in records]
    assert kinds[0] == "start" and "degraded" in kinds and kinds[-1] == "end"
    params = next(r["data"] for r in records if r["kind"] == "params")
    assert params == config_params(pooled_run.platform.cfg.model_dump(mode="json"))
    keys = _metric_keys_by_step(records)
    assert "cloud/val_acc" in keys[0]
    for rnd in ROUNDS:
        assert {"cloud/val_acc", "merge/decision"} <= keys[rnd]
        for n in DEVICES:
            assert {f"device/{n}/{k}" for k in PER_ROUND_DEVICE_KEYS} <= keys[rnd], (rnd, n)
    versions = [r for r in records if r["kind"] == "model_version"]
    stored = [r["data"] for r in records if r["kind"] == "stored"]
    assert versions and not any(s.get("registered_version") for s in stored)  # nothing reached a registry
    versions = [r["data"] for r in versions]
    root = Path(pooled_run.journal).parent
    assert all((root / v["files"]["weights"]).is_file() for v in versions)


def test_pooled_mode_logs_the_same_per_device_metrics_as_one_actor_per_device(pooled_run, campaign):
    assert all(e.pooled for e in pooled_run.fleet.devices.values()) or not pooled_run.fleet.devices
    assert len({id(a) for a in pooled_run.actors.values()}) == 1
    pooled = _metric_keys_by_step(_journal(pooled_run.journal), "device/")
    single = campaign.device_keys
    for rnd in ROUNDS:
        assert pooled[rnd] == single[rnd], rnd
        assert {k.split("/")[1] for k in pooled[rnd]} == set(DEVICES)


# ---------------------------------------------------------------------- a killed edge actor (last)
def test_a_killed_edge_actor_fails_its_cycle_and_is_restarted_with_its_stream(campaign, mlflow_client):
    import ray

    p = campaign.platform
    p.observe()
    step_at_kill = p.state.positions["d1"]
    killed = p.fleet.actor("d1")
    ray.kill(killed, no_restart=True)

    res = p.run_cycle()

    assert set(res.failures) == {"d1"} and res.failures["d1"].startswith("summary: dead")
    assert set(res.device_metrics) == {"d0", "d2"}
    assert "d1" not in res.merge.accepted
    run_id = p.tracker.run_id
    report = json.loads(_artifact(mlflow_client, run_id, f"rounds/round_{res.round:03d}/merge_report.json",
                                  campaign.tmp / "dl-kill"))
    assert set(report["failures"]) == {"d1"}
    assert _history(mlflow_client, run_id, "devices/failed")[res.round] == 1

    p.observe()  # recreates d1 from its store, then advances it
    assert p.fleet.actor("d1")._actor_id != killed._actor_id
    assert p.state.positions["d1"] == step_at_kill + p.cfg.steps_per_cycle
    again = p.run_cycle()
    assert not again.failures and set(again.device_metrics) == set(DEVICES)
    assert any("restarted" in a.path for a in mlflow_client.list_artifacts(run_id, "events"))
