"""The cycle coordinator against scripted in-process endpoints (no Ray, no torch training).

The scripted cloud and devices implement the endpoint protocols with programmable behaviour, so
each test states exactly what the endpoints do and checks what the coordinator makes of it.
"""

from __future__ import annotations

import hashlib
from collections import deque

import pytest

from eclm.campaign.coordinator import CycleCoordinator
from eclm.campaign.endpoints import EndpointDead
from eclm.campaign.local import LocalFleet
from eclm.campaign.messages import (
    CloudInfo,
    CloudSnapshot,
    DeviceMetrics,
    DeviceSummary,
    DeviceUpdate,
    DriftReport,
    EpochRecord,
    HeldModel,
    InstallReport,
    MergeOutcome,
    Resources,
    StreamPosition,
    SubModelPackage,
)
from eclm.campaign.store import MemoryStore
from eclm.config import PlatformConfig
from eclm.modules.spec import SubModelSpec
from eclm.pipelines.triggers import DriftTrigger

SPEC = SubModelSpec(model_id="m", groups=((0,), (1,)))
NAMES = ["a", "b", "c"]


class ScriptedCloud:
    """A cloud whose merge decisions come from a script; versions and snapshots behave for real."""

    def __init__(self, decisions: deque, log: list) -> None:
        self.version, self.decisions, self.log = 0, decisions, log
        self.fail_next: dict[str, BaseException] = {}
        self.arrivals: list[tuple[list[str], int]] = []

    def _maybe_fail(self, method: str) -> None:
        if method in self.fail_next:
            raise self.fail_next.pop(method)

    def info(self) -> CloudInfo:
        return CloudInfo(model_id="m", arch={}, layer_names=("l0", "l1"), layer_sizes=(2, 2),
                         allows_empty=(True, True), costs={}, full_cost={"params": 10.0}, num_classes=3,
                         version=self.version, proxy_train=10, proxy_val=10)

    def pretrain_begin(self) -> int:
        return 2

    def pretrain_epoch(self) -> EpochRecord:
        return EpochRecord(stage="modules", epoch=0, loss=1.0, ce=1.0, aux=0.0, train_acc=0.5, val_acc_dense=0.5,
                           val_acc_routed=0.5)

    def validation_accuracy(self) -> float:
        return 0.5 + 0.1 * self.version

    def selector_payload(self) -> bytes:
        return b"selector"

    def derive(self, summary: DeviceSummary) -> SubModelPackage:
        self._maybe_fail("derive")
        return SubModelPackage(device=summary.device, spec=SPEC, payload=b"weights", version=self.version)

    def merge(self, updates: list) -> MergeOutcome:
        self._maybe_fail("merge")
        self.log.append(("merge", sorted(u.channel for u in updates)))
        decision = self.decisions.popleft() if self.decisions else "accept"
        channels = [u.channel for u in updates]
        rejected = {channels[-1]: "harmful: scripted"} if decision == "partial" else {}
        if decision == "reject":
            rejected = dict.fromkeys(channels, "harmful: scripted")
        if decision in ("accept", "partial"):
            self.version += 1
        accepted = tuple(c for c in channels if c not in rejected)
        return MergeOutcome(decision=decision, reason="scripted", accepted=accepted, rejected=rejected,
                            version=self.version)

    def prescreen(self, updates: list) -> int:
        self._maybe_fail("prescreen")
        self.arrivals.append(([u.channel for u in updates], len(self.log)))  # (who, merges before it)
        return len(updates)

    def snapshot(self) -> CloudSnapshot:
        self._maybe_fail("snapshot")
        return CloudSnapshot(version=self.version, weights=f"v{self.version}".encode())

    def restore(self, snapshot: CloudSnapshot) -> int:
        self.version = snapshot.version
        self.log.append(("restore", snapshot.version))
        return self.version


class ScriptedDevice:
    """A device with a fixed summary; ``adapt_with`` scripts what adapting does."""

    def __init__(self, name: str, drift: float = 0.0) -> None:
        self.name, self.drift_score, self.step = name, drift, 0
        self.held: HeldModel | None = None
        self.adapt_with = None
        self.selector_digest, self.selectors_received = None, 0

    def advance(self, steps: int) -> StreamPosition:
        self.step += steps
        return StreamPosition(device=self.name, step=self.step)

    def drift(self) -> DriftReport:
        return DriftReport(device=self.name, labelled=self.drift_score, label_free=0.0, combined=self.drift_score)

    def profile(self) -> Resources:
        return Resources()

    def summary(self, selector) -> DeviceSummary:
        if selector is not None:
            self.selectors_received += 1
            self.selector_digest = hashlib.sha256(selector).hexdigest()
        return DeviceSummary(device=self.name, importance=((0.5, 0.5), (0.5, 0.5)), resources=Resources(),
                             num_samples=10, classes=(0, 1), held=self.held, selector_digest=self.selector_digest)

    def install(self, package: SubModelPackage, costs) -> InstallReport:
        self.held = HeldModel(spec=package.spec, version=package.version)
        return InstallReport(device=self.name, params=10, modules=2)

    def adapt(self) -> DeviceUpdate:
        if self.adapt_with is not None:
            return self.adapt_with(self)
        return DeviceUpdate(device=self.name, payload=b"delta", importance=((0.5, 0.5), (0.5, 0.5)), num_samples=10,
                            classes=(0, 1), metrics=DeviceMetrics(acc_before=0.4, acc_after=0.8))


def make(decisions=(), trigger=None, progress=None, merge=None):
    cfg = PlatformConfig.from_dict({"devices": [{"name": n} for n in NAMES], "data": {"num_devices": len(NAMES)},
                                    "tracking": {"enabled": False}, "merge": merge or {}})
    log: list = []
    script = deque(decisions)
    devices = {n: ScriptedDevice(n, drift=0.9 if n == "b" else 0.1) for n in NAMES}
    created = {n: 0 for n in NAMES}

    def device_factory(name):
        def build():
            created[name] += 1
            return devices[name]
        return build

    clouds: list[ScriptedCloud] = []

    def cloud_factory():
        clouds.append(ScriptedCloud(script, log))
        return clouds[-1]

    fleet = LocalFleet(cloud_factory, {n: device_factory(n) for n in NAMES})
    co = CycleCoordinator(fleet, cfg, store=MemoryStore(), trigger=trigger, progress=progress)
    co.connect()
    co.pretrain()
    return co, devices, clouds, log, created


def test_an_accepted_merge_moves_the_version_and_commits_it():
    co, _, _, log, _ = make(["accept"])
    result = co.run_cycle()
    assert result.merge.decision == "accept" and result.merge.accepted == ("a", "b", "c")
    assert co.state.version == 1 and co.state.round == 1 and not result.failures
    assert result.cloud_val_acc == pytest.approx(0.6)
    state, snapshot = co.store.load_latest()
    assert state.version == 1 and snapshot.weights == b"v1"
    assert {n: h.version for n, h in state.held.items()} == dict.fromkeys(NAMES, 0)  # installed before the merge
    assert log == [("merge", ["a", "b", "c"])]


def test_each_upload_is_handed_to_the_cloud_as_it_arrives_before_the_merge():
    co, devices, clouds, log, _ = make(["accept"])
    devices["b"].adapt_with = lambda d: DeviceUpdate(device="a", payload=b"x", importance=((0.5, 0.5), (0.5, 0.5)),
                                                     num_samples=1, classes=(0,))  # claims another device
    result = co.run_cycle()
    assert clouds[-1].arrivals == [(["a"], 0), (["c"], 0)]  # one by one, before any merge; "b" never
    assert log == [("merge", ["a", "c"])] and "b" in result.failures


def test_uploads_arriving_while_the_cloud_still_screens_go_together_in_the_next_call():
    co, _, clouds, log, _ = make(["accept"])
    answers = iter([False, True])  # the call for "a" is still running when "b" arrives, done when "c" does
    co.fleet.done = lambda pending: next(answers)
    co.run_cycle()
    assert clouds[-1].arrivals == [(["a"], 0), (["b", "c"], 0)] and log == [("merge", ["a", "b", "c"])]


def test_screening_on_arrival_off_or_failing_changes_nothing_of_the_cycle():
    co, _, clouds, log, _ = make(["accept"], merge={"screen_on_arrival": False})
    co.run_cycle()
    assert clouds[-1].arrivals == [] and log == [("merge", ["a", "b", "c"])]
    co, _, clouds, log, _ = make(["accept"])
    clouds[-1].fail_next["prescreen"] = RuntimeError("busy")
    result = co.run_cycle()
    assert result.merge.decision == "accept" and not result.failures and log == [("merge", ["a", "b", "c"])]
    assert [who for who, _ in clouds[-1].arrivals] == [["b"], ["c"]]  # the failed first call cost only itself


def test_a_partial_merge_records_the_excluded_device():
    co, *_ = make(["partial"])
    result = co.run_cycle()
    assert result.merge.decision == "partial" and set(result.merge.rejected) == {"c"}
    assert co.state.version == 1


def test_a_rejected_merge_keeps_the_version_and_its_files():
    co, *_ = make(["reject"])
    result = co.run_cycle()
    assert result.merge.decision == "reject" and co.state.version == 0
    state, snapshot = co.store.load_latest()
    assert state.version == 0 and snapshot.weights == b"v0" and state.round == 1


def test_a_device_failing_mid_cycle_drops_out_alone():
    co, devices, _, log, _ = make(["accept"])

    def broken(_):
        raise RuntimeError("out of memory while adapting")

    devices["b"].adapt_with = broken
    result = co.run_cycle()
    assert set(result.failures) == {"b"} and "RuntimeError: out of memory" in result.failures["b"]
    assert log == [("merge", ["a", "c"])] and result.merge.accepted == ("a", "c")
    assert set(result.device_metrics) == {"a", "c"}


def test_a_reply_claiming_another_device_is_not_merged_as_that_device():
    co, devices, _, log, _ = make(["accept"])
    devices["c"].adapt_with = lambda d: DeviceUpdate(device="a", payload=b"x", importance=((0.5, 0.5), (0.5, 0.5)),
                                                     num_samples=10, classes=(0, 1))
    result = co.run_cycle()
    assert "reply names device 'a'" in result.failures["c"]
    assert log == [("merge", ["a", "b"])]  # the real "a" is merged, not dropped as a duplicate


def test_a_dead_device_is_restarted_before_its_next_call():
    co, devices, _, _, created = make()

    def dies(_):
        raise EndpointDead("process gone")

    devices["a"].adapt_with = dies
    first = co.run_cycle()
    assert first.failures["a"].startswith("adapt: dead")
    devices["a"].adapt_with = None
    second = co.run_cycle()
    assert created["a"] == 2 and created["b"] == 1  # only the dead one was rebuilt
    assert not second.failures and "a" in second.merge.accepted


def test_a_trigger_deciding_nothing_runs_no_cycle_but_still_commits_the_step():
    co, *_ = make(trigger=DriftTrigger(threshold=5.0))
    commits = len(co.store.commits())
    assert co.step() is None
    assert co.state.round == 0 and co.state.step == 1 and len(co.store.commits()) == commits + 1


def test_a_drift_trigger_adapts_only_the_drifted_device():
    co, *_ = make(trigger=DriftTrigger(threshold=0.5))
    result = co.step()
    assert result is not None and result.devices == ["b"] and result.reason.startswith("drift")


def test_a_cloud_dying_in_the_merge_is_recreated_from_the_store_and_the_merge_retried():
    co, _, clouds, log, _ = make(["accept", "accept"])
    co.run_cycle()
    clouds[-1].fail_next["merge"] = EndpointDead("cloud process gone")
    result = co.run_cycle()
    assert len(clouds) == 2 and ("restore", 1) in log  # rebuilt at the last committed version
    assert result.merge.decision == "accept" and co.state.version == 2 and not result.failures


def test_a_merged_version_lost_with_the_cloud_before_its_snapshot_is_merged_again():
    co, _, clouds, log, _ = make(["accept", "accept"])
    clouds[-1].fail_next["snapshot"] = EndpointDead("died after merging")
    result = co.run_cycle()
    # The recreated cloud came back at version 0, so the merge ran again and version 1 is durable.
    assert [e for e in log if e[0] == "merge"] == [("merge", NAMES), ("merge", NAMES)]
    assert result.merge.version == 1 and co.store.load_latest()[1].weights == b"v1"


def test_a_cloud_that_stays_dead_fails_the_cycle_and_the_campaign_goes_on():
    co, _, clouds, _, _ = make()
    clouds[-1].fail_next["derive"] = EndpointDead("gone")

    def recreate_dead(snapshot):  # every new cloud dies at once too
        raise_ = ScriptedCloud(deque(), [])
        raise_.fail_next["derive"] = EndpointDead("gone again")
        clouds.append(raise_)
        co.fleet.cloud.service = raise_
        co.fleet.cloud.dead = False

    co.fleet.recreate_cloud = recreate_dead
    result = co.run_cycle()
    assert result.cloud_failed and "gone again" in result.failures["cloud"]
    assert result.merge.decision == "reject" and co.state.round == 1
    del co.fleet.recreate_cloud  # the cloud can be recreated again: the next cycle recovers it
    again = co.run_cycle()
    assert again.merge.decision == "accept" and not again.failures


def test_unknown_devices_are_refused_before_anything_runs():
    co, *_ = make()
    with pytest.raises(ValueError, match="unknown devices"):
        co.run_cycle(["a", "nobody"])
    assert co.state.round == 0


class RecordedProgress:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def message(self, text):
        self.events.append(("message", text))

    def begin(self, task, total):
        self.events.append(("begin", task, total))

    def advance(self, task, note=""):
        self.events.append(("advance", task))

    def end(self, task):
        self.events.append(("end", task))


def test_progress_follows_the_offline_stage_epoch_by_epoch_and_a_cycle_phase_by_phase():
    progress = RecordedProgress()
    co, *_ = make(progress=progress)
    assert progress.events == [("begin", "offline stage", 2), ("advance", "offline stage"),
                               ("advance", "offline stage"), ("end", "offline stage")]
    progress.events.clear()
    co.run_cycle()
    assert progress.events[0] == ("begin", "cycle 1", 5) and progress.events[-1] == ("end", "cycle 1")
    assert [e[0] for e in progress.events[1:-1]] == ["advance"] * 5


def test_bar_progress_draws_on_its_stream():
    import io

    from eclm.campaign.progress import BarProgress

    out = io.StringIO()
    bar = BarProgress(out, leave=True)
    bar.message("starting Ray")
    bar.begin("offline stage", 3)
    for _ in range(3):
        bar.advance("offline stage", "val 50%")
    bar.end("offline stage")
    text = out.getvalue()
    assert "eclm: starting Ray" in text and "offline stage" in text and "3/3" in text


def test_the_selector_travels_once_unless_a_device_lost_it():
    co, devices, *_ = make()
    first, second = co.run_cycle(), co.run_cycle()
    assert first.bytes_down["a"] == len(b"selector") + len(b"weights")  # selector + full package
    assert second.bytes_down["a"] == len(b"weights") and devices["a"].selectors_received == 1
    devices["b"].selector_digest = None  # e.g. restarted on a node without its copy
    third = co.run_cycle()
    assert devices["b"].selectors_received == 2 and third.bytes_down["b"] >= len(b"selector")
