"""Trigger policies: scripted observation sequences, cooldowns, composites, operators, config."""

import math
import subprocess
import sys

import pytest
from pydantic import ValidationError

from eclm.pipelines.triggers import (
    ALL_DEVICES,
    AllOf,
    AnyOf,
    Decision,
    DriftTrigger,
    ManualTrigger,
    Observation,
    PeriodicTrigger,
    ResourceChangeTrigger,
    Trigger,
    TriggerConfig,
    relative_change,
    trigger_from_config,
)


def obs(step, time=None, **kw) -> Observation:
    """An observation at ``step``; time defaults to the step number (seconds)."""
    return Observation(step=step, time=float(step) if time is None else time, **kw)


class ScriptedTrigger(Trigger):
    """Test double: returns queued decisions in order and counts calls."""

    def __init__(self, *decisions: Decision) -> None:
        self.script = list(decisions)
        self.reset()

    def reset(self) -> None:
        self.calls = 0

    def decide(self, o: Observation) -> Decision:
        self.calls += 1
        return self.script[self.calls - 1]


A, N = Decision.adapt, Decision.nothing


# --------------------------------------------------------------------------- package hygiene

def test_importing_triggers_does_not_import_ray_or_mlflow():
    code = ("import sys, eclm.pipelines.triggers, eclm.resources; "
            "assert 'ray' not in sys.modules, 'ray imported'; assert 'mlflow' not in sys.modules, 'mlflow imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_public_api_is_exported():
    import eclm.pipelines.triggers as triggers

    assert [name for name in triggers.__all__ if not hasattr(triggers, name)] == []


# --------------------------------------------------------------------------- Decision

@pytest.mark.parametrize("left,right,kind,devices", [
    (N("a"), N("b"), "nothing", ()),
    (A(["x"], "a"), N("b"), "adapt", ("x",)),
    (N("a"), A(["x"], "b"), "adapt", ("x",)),
    (A(["x", "y"], "a"), A(["y", "z"], "b"), "adapt", ("x", "y", "z")),
    (A([], "a"), A(["y"], "b"), "adapt", ()),  # all devices absorbs any set
    (A(["y"], "a"), A([], "b"), "adapt", ()),
])
def test_merge_is_union_with_all_devices_absorbing(left, right, kind, devices):
    merged = left.merge(right)
    assert (merged.kind, merged.devices) == (kind, devices)


def test_merge_joins_reasons_of_two_firing_decisions_once_each():
    merged = A(["x"], "drift").merge(A(["y"], "manual")).merge(A(["z"], "manual"))
    assert merged.reason == "drift; manual"


@pytest.mark.parametrize("left,right,kind,devices", [
    (A(["x", "y"], "a"), A(["y", "z"], "b"), "adapt", ("y",)),
    (A([], "a"), A(["y", "z"], "b"), "adapt", ("y", "z")),  # all devices is the identity
    (A(["x"], "a"), A([], "b"), "adapt", ("x",)),
    (A([], "a"), A([], "b"), "adapt", ()),
    (A(["x"], "a"), A(["y"], "b"), "nothing", ()),  # disjoint
    (A(["x"], "a"), N("b"), "nothing", ()),
])
def test_intersect_table(left, right, kind, devices):
    result = left.intersect(right)
    assert (result.kind, result.devices) == (kind, devices)


@pytest.mark.parametrize("make,error,match", [
    (lambda: Decision("maybe"), ValueError, "kind"),
    (lambda: Decision("nothing", ("x",)), ValueError, "devices"),
    (lambda: Decision.adapt("cam-1"), TypeError, "string"),
    (lambda: Decision.adapt(["cam-1", 3]), TypeError, "devices"),
    (lambda: Decision.adapt(["cam-1", ""]), TypeError, "devices"),
    (lambda: A(["x"]).merge("adapt"), TypeError, "Decision"),
])
def test_bad_decisions_are_rejected(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_decision_dedupes_devices_and_resolves_targets():
    d = A(["b", "a", "b"])
    assert d.devices == ("b", "a")
    assert d.targets(["a", "b", "c"]) == ("b", "a")
    assert A().targets(["a", "b", "c"]) == ("a", "b", "c")
    assert N().targets(["a", "b"]) == ()


# --------------------------------------------------------------------------- Observation

@pytest.mark.parametrize("kw,error,match", [
    (dict(step=-1, time=0.0), ValueError, "step"),
    (dict(step=1.5, time=0.0), ValueError, "step"),
    (dict(step=0, time=math.nan), ValueError, "time"),
    (dict(step=0, time=0.0, drift_scores={"x": math.inf}), ValueError, "drift_scores"),
    (dict(step=0, time=0.0, drift_scores={"x": True}), TypeError, "drift_scores"),
    (dict(step=0, time=0.0, resources={"x": 3.0}), TypeError, "resources"),
    (dict(step=0, time=0.0, resources={"x": {"mem": math.nan}}), ValueError, "mem"),
    (dict(step=0, time=0.0, devices="cam-1"), TypeError, "devices"),
    (dict(step=0, time=0.0, manual_requests=[1]), TypeError, "manual_requests"),
])
def test_bad_observations_are_rejected(kw, error, match):
    with pytest.raises(error, match=match):
        Observation(**kw)


def test_observation_copies_its_inputs():
    scores = {"x": 0.1}
    o = obs(0, drift_scores=scores)
    scores["x"] = 9.0
    assert o.drift_scores == {"x": 0.1}


# --------------------------------------------------------------------------- PeriodicTrigger

@pytest.mark.parametrize("every,steps,fires", [
    (3, [0, 1, 2, 3, 4, 5, 6], [0, 0, 0, 1, 0, 0, 1]),
    (3, [0, 4, 4, 8, 13], [0, 1, 0, 1, 1]),  # a skipped multiple fires at the next step; 9 and 12 once
    (3, [6, 6, 7, 9], [1, 0, 0, 1]),  # a repeated step fires at most once
    (1, [0, 1, 2, 2, 3], [0, 1, 1, 0, 1]),
])
def test_periodic_by_steps(every, steps, fires):
    trigger = PeriodicTrigger(every_steps=every)
    got = [trigger.decide(obs(s)) for s in steps]
    assert [int(d.fires) for d in got] == fires
    assert all(d.all_devices for d in got if d.fires)


@pytest.mark.parametrize("every,times,fires", [
    (10.0, [100.0, 105.0, 109.99, 110.0, 115.0, 119.9, 120.0], [0, 0, 0, 1, 0, 0, 1]),
    (10.0, [0.0, 45.0, 50.0, 55.0], [0, 1, 0, 1]),  # a long pause gives one catch-up, measured from it
    (0.5, [3.0, 3.0, 3.5, 3.5], [0, 0, 1, 0]),
])
def test_periodic_by_seconds_uses_observation_time(every, times, fires):
    trigger = PeriodicTrigger(every_seconds=every)
    got = [trigger.decide(obs(step, time=t)) for step, t in enumerate(times)]
    assert [int(d.fires) for d in got] == fires


@pytest.mark.parametrize("kw,match", [
    (dict(), "exactly one"),
    (dict(every_steps=2, every_seconds=1.0), "exactly one"),
    (dict(every_steps=0), "every_steps"),
    (dict(every_steps=2.0), "every_steps"),
    (dict(every_seconds=-1.0), "every_seconds"),
    (dict(every_seconds=math.inf), "every_seconds"),
])
def test_periodic_rejects_bad_periods(kw, match):
    with pytest.raises(ValueError, match=match):
        PeriodicTrigger(**kw)


@pytest.mark.parametrize("trigger,first,second,match", [
    (PeriodicTrigger(every_steps=2), obs(5), obs(4), "step"),
    (PeriodicTrigger(every_seconds=2.0), obs(5, time=10.0), obs(6, time=9.0), "time"),
    (DriftTrigger(0.5), obs(5), obs(4), "step"),
    (ResourceChangeTrigger(), obs(5), obs(4), "step"),
])
def test_going_back_in_step_or_time_is_an_error_until_reset(trigger, first, second, match):
    trigger.decide(first)
    with pytest.raises(ValueError, match=match):
        trigger.decide(second)
    trigger.reset()
    trigger.decide(second)  # accepted after reset


# --------------------------------------------------------------------------- DriftTrigger

@pytest.mark.parametrize("kw,scores,expected", [
    # threshold is strict: exactly 0.5 does not fire
    (dict(threshold=0.5), [{"a": 0.5, "b": 0.2}, {"a": 0.51, "b": 0.9}], [(), ("a", "b")]),
    # watched subset only
    (dict(threshold=0.5, devices=["b"]), [{"a": 0.9, "b": 0.1}, {"a": 0.9, "b": 0.6}], [(), ("b",)]),
    # devices missing from a step are not considered that step
    (dict(threshold=0.0), [{}, {"c": 0.3}], [(), ("c",)]),
    # negative thresholds work (e.g. log-likelihood scores)
    (dict(threshold=-2.0), [{"a": -3.0, "b": -1.0}], [("b",)]),
])
def test_drift_fires_for_devices_above_threshold(kw, scores, expected):
    trigger = DriftTrigger(**kw)
    got = [trigger.decide(obs(step, drift_scores=s)) for step, s in enumerate(scores)]
    assert [d.devices if d.fires else () for d in got] == expected
    assert all(not d.all_devices for d in got)


@pytest.mark.parametrize("cooldown,fire_steps", [
    (0, [0, 1, 2, 3, 4, 5, 6]),
    (2, [0, 3, 6]),
    (3, [0, 4]),
    (10, [0]),
])
def test_drift_cooldown_keeps_a_device_quiet_for_cooldown_steps(cooldown, fire_steps):
    trigger = DriftTrigger(0.5, cooldown_steps=cooldown)
    fired = [step for step in range(7) if trigger.decide(obs(step, drift_scores={"a": 0.9})).fires]
    assert fired == fire_steps


def test_drift_cooldown_is_per_device():
    trigger = DriftTrigger(0.5, cooldown_steps=5)
    first = trigger.decide(obs(0, drift_scores={"a": 0.9, "b": 0.1}))
    second = trigger.decide(obs(1, drift_scores={"a": 0.9, "b": 0.9}))
    assert first.devices == ("a",)
    assert second.devices == ("b",)  # b is not held back by a's cooldown
    assert trigger.cooling_down("a", 5) and not trigger.cooling_down("a", 6)


@pytest.mark.parametrize("kw,error,match", [
    (dict(threshold=math.nan), ValueError, "threshold"),
    (dict(threshold=0.5, cooldown_steps=-1), ValueError, "cooldown_steps"),
    (dict(threshold=0.5, devices=[]), ValueError, "devices"),
    (dict(threshold=0.5, devices="cam-1"), TypeError, "devices"),
])
def test_drift_rejects_bad_arguments(kw, error, match):
    with pytest.raises(error, match=match):
        DriftTrigger(**kw)


# --------------------------------------------------------------------------- ResourceChangeTrigger

@pytest.mark.parametrize("old,new,expected", [
    (100.0, 150.0, 0.5),
    (100.0, 50.0, 0.5),
    (0.0, 0.0, 0.0),
    (0.0, 1.0, math.inf),
    (-4.0, -2.0, 0.5),
])
def test_relative_change(old, new, expected):
    assert relative_change(old, new) == pytest.approx(expected)


@pytest.mark.parametrize("sequence,expected", [
    # first observation only records; then >20% moves fire, measured against the last seen value
    ([{"a": {"mem": 100.0}}, {"a": {"mem": 119.0}}, {"a": {"mem": 150.0}}], [(), (), ("a",)]),
    # exactly 20% is not more than 20%
    ([{"a": {"mem": 100.0}}, {"a": {"mem": 120.0}}], [(), ()]),
    # slow creep of 10% per step never fires (last-seen baseline)
    ([{"a": {"cpu": 100.0 * 1.1 ** k}} for k in range(6)], [()] * 6),
    # any one resource is enough; devices appearing later only record first
    ([{"a": {"mem": 1.0, "bw": 10.0}}, {"a": {"mem": 1.0, "bw": 2.0}, "b": {"mem": 1.0}},
      {"a": {"mem": 1.0, "bw": 2.0}, "b": {"mem": 5.0}}], [(), ("a",), ("b",)]),
    # a new resource name on a known device only records
    ([{"a": {"mem": 1.0}}, {"a": {"mem": 1.0, "gpu": 1.0}}, {"a": {"mem": 1.0, "gpu": 0.0}}], [(), (), ("a",)]),
    # a device missing for a while is compared with its last seen value when it returns
    ([{"a": {"mem": 100.0}}, {}, {"a": {"mem": 200.0}}], [(), (), ("a",)]),
])
def test_resource_change_sequences(sequence, expected):
    trigger = ResourceChangeTrigger(relative_change=0.2)
    got = [trigger.decide(obs(step, resources=r)) for step, r in enumerate(sequence)]
    assert [d.devices if d.fires else () for d in got] == expected


@pytest.mark.parametrize("bad", [0.0, -0.1, math.inf, True])
def test_resource_change_rejects_bad_relative_change(bad):
    with pytest.raises(ValueError, match="relative_change"):
        ResourceChangeTrigger(relative_change=bad)


# --------------------------------------------------------------------------- ManualTrigger

def test_manual_request_fires_exactly_once():
    trigger = ManualTrigger()
    assert not trigger.decide(obs(0)).fires
    trigger.request(["cam-2"])
    assert trigger.pending == 1
    first, second = trigger.decide(obs(1)), trigger.decide(obs(2))
    assert (first.kind, first.devices) == ("adapt", ("cam-2",))
    assert not second.fires and trigger.pending == 0


@pytest.mark.parametrize("queued,in_obs,devices", [
    ([["a"], ["b", "a"]], (), ("a", "b")),
    ([["a"], None], (), ()),  # one request for all devices wins
    ([], ("c",), ("c",)),
    ([["a"]], ("c",), ("a", "c")),
    ([["a"]], (ALL_DEVICES,), ()),
])
def test_manual_requests_are_merged_into_one_decision(queued, in_obs, devices):
    trigger = ManualTrigger()
    for request in queued:
        trigger.request(request)
    decision = trigger.decide(obs(0, manual_requests=in_obs))
    assert decision.fires and decision.devices == devices
    assert not trigger.decide(obs(1)).fires


def test_manual_reset_drops_pending_requests():
    trigger = ManualTrigger()
    trigger.request()
    trigger.reset()
    assert not trigger.decide(obs(0)).fires


# --------------------------------------------------------------------------- composites and operators

@pytest.mark.parametrize("children,kind,devices", [
    ([N("x"), N("y")], "nothing", ()),
    ([A(["a"], "x"), N("y")], "adapt", ("a",)),
    ([A(["a"], "x"), A(["b"], "y"), A(["a"], "z")], "adapt", ("a", "b")),
    ([A(["a"], "x"), A([], "y")], "adapt", ()),
])
def test_any_of_merges_firing_children(children, kind, devices):
    decision = AnyOf(*(ScriptedTrigger(d) for d in children)).decide(obs(0))
    assert (decision.kind, decision.devices) == (kind, devices)


@pytest.mark.parametrize("children,kind,devices", [
    ([A(["a", "b"]), N("quiet")], "nothing", ()),
    ([A(["a", "b"]), A(["b", "c"])], "adapt", ("b",)),
    ([A(["a", "b"]), A([])], "adapt", ("a", "b")),
    ([A([]), A([])], "adapt", ()),
    ([A(["a"]), A(["b"])], "nothing", ()),
    ([A(["a", "b", "c"]), A(["b", "c"]), A(["c", "a"])], "adapt", ("c",)),
])
def test_all_of_intersects_when_every_child_fires(children, kind, devices):
    decision = AllOf(*(ScriptedTrigger(d) for d in children)).decide(obs(0))
    assert (decision.kind, decision.devices) == (kind, devices)


@pytest.mark.parametrize("composite", [AnyOf, AllOf])
def test_composites_ask_every_child_every_step(composite):
    # The first child's answer already settles the outcome; the others must still see the step.
    first = ScriptedTrigger(A([]), A([])) if composite is AnyOf else ScriptedTrigger(N(), N())
    rest = [ScriptedTrigger(N(), N()), ScriptedTrigger(A(["a"]), A(["a"]))]
    trigger = composite(first, *rest)
    trigger.decide(obs(0))
    trigger.decide(obs(1))
    assert [t.calls for t in (first, *rest)] == [2, 2, 2]
    trigger.reset()
    assert [t.calls for t in (first, *rest)] == [0, 0, 0]


def test_operators_build_flat_composites():
    a, b, c = ScriptedTrigger(), ScriptedTrigger(), ScriptedTrigger()
    any_of, all_of, mixed = a | b | c, a & b & c, (a | b) & c
    assert isinstance(any_of, AnyOf) and any_of.triggers == (a, b, c)
    assert isinstance(all_of, AllOf) and all_of.triggers == (a, b, c)
    assert isinstance(mixed, AllOf) and isinstance(mixed.triggers[0], AnyOf) and mixed.triggers[1] is c


@pytest.mark.parametrize("build", [lambda t: t | 3, lambda t: t & "x"])
def test_operators_reject_non_triggers(build):
    with pytest.raises(TypeError):
        build(ManualTrigger())


@pytest.mark.parametrize("build,error", [
    (lambda: AnyOf(), ValueError),
    (lambda: AllOf(ManualTrigger(), "drift"), TypeError),
])
def test_composites_reject_bad_children(build, error):
    with pytest.raises(error):
        build()


def test_drift_gated_by_period_adapts_drifted_devices_only_on_schedule():
    trigger = DriftTrigger(0.5) & PeriodicTrigger(every_steps=3)
    scores = {"a": 0.9, "b": 0.1}
    got = [trigger.decide(obs(step, drift_scores=scores)) for step in range(7)]
    assert [d.devices if d.fires else None for d in got] == [None, None, None, ("a",), None, None, ("a",)]


def test_reset_then_replay_reproduces_the_same_decisions():
    trigger = (DriftTrigger(0.5, cooldown_steps=1) | ResourceChangeTrigger(0.3)
               | PeriodicTrigger(every_seconds=4.0))
    script = [obs(s, time=1.5 * s, drift_scores={"a": 0.2 + 0.1 * s}, resources={"b": {"mem": 1.0 + (s % 3)}})
              for s in range(10)]
    first = [trigger.decide(o) for o in script]
    trigger.reset()
    assert [trigger.decide(o) for o in script] == first
    assert any(d.fires for d in first) and not all(d.fires for d in first)


# --------------------------------------------------------------------------- config

def test_config_builds_the_described_tree():
    cfg = {"kind": "any", "children": [
        {"kind": "all", "children": [
            {"kind": "drift", "params": {"threshold": 0.3, "devices": ["a"], "cooldown_steps": 2}},
            {"kind": "periodic", "params": {"every_seconds": 60}}]},
        {"kind": "resource", "params": {"relative_change": 0.5}},
        {"kind": "manual"}]}
    trigger = trigger_from_config(cfg)
    assert isinstance(trigger, AnyOf)
    gated, resource, manual = trigger.triggers
    drift, periodic = gated.triggers
    assert isinstance(gated, AllOf) and isinstance(manual, ManualTrigger)
    assert (drift.threshold, drift.devices, drift.cooldown_steps) == (0.3, ("a",), 2)
    assert (periodic.every_steps, periodic.every_seconds) == (None, 60.0)
    assert resource.relative_change == 0.5
    assert isinstance(trigger_from_config(TriggerConfig(kind="periodic", params={"every_steps": 4})), PeriodicTrigger)


@pytest.mark.parametrize("cfg,match", [
    ({"kind": "sometimes"}, "kind"),
    ({"kind": "manual", "when": "now"}, "when"),
    ({"kind": "drift", "params": {"threshhold": 0.3}}, "params.threshhold"),
    ({"kind": "drift", "params": {}}, "params.threshold"),
    ({"kind": "drift", "params": {"threshold": 0.3, "cooldown_steps": -1}}, "params.cooldown_steps"),
    ({"kind": "drift", "params": {"threshold": "nan"}}, "params.threshold"),
    ({"kind": "periodic", "params": {}}, "exactly one"),
    ({"kind": "periodic", "params": {"every_steps": 2, "every_seconds": 3}}, "exactly one"),
    ({"kind": "periodic", "params": {"every_steps": 0}}, "params.every_steps"),
    ({"kind": "resource", "params": {"relative_change": 0}}, "params.relative_change"),
    ({"kind": "manual", "params": {"devices": ["a"]}}, "params.devices"),
    ({"kind": "any"}, "children"),
    ({"kind": "all", "children": [{"kind": "manual"}], "params": {"x": 1}}, "no params"),
    ({"kind": "drift", "params": {"threshold": 0.3}, "children": [{"kind": "manual"}]}, "no children"),
    ({"kind": "any", "children": [{"kind": "periodic", "params": {"every_step": 3}}]}, "every_step"),
])
def test_bad_config_fails_at_load_naming_the_field(cfg, match):
    with pytest.raises(ValidationError, match=match):
        TriggerConfig.model_validate(cfg)
    with pytest.raises(ValueError, match=match):  # pydantic's ValidationError is a ValueError
        trigger_from_config(cfg)


def test_trigger_from_config_rejects_other_types():
    with pytest.raises(TypeError, match="TriggerConfig"):
        trigger_from_config(["manual"])
