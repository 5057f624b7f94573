"""ValidatedMerge with hand-built updates and a scripted evaluator (no Ray, no data).

Two devices on a tiny modular ResNet: ``good`` holds module 0 of every layer, ``bad`` module 1.
The evaluator is a plain function whose answers the test scripts per set of merged devices, so
every decision (accept, partial accept, reject) is forced and its consequences checked on the
returned state and on the caller's cloud state.
"""

from __future__ import annotations

import pytest
import torch

from eclm.modules import ModuleUpdate, SubModelSpec, modularize
from eclm.modules.merge import tensor_owner
from eclm.pipelines.aggregators import CoordinateMedian
from eclm.pipelines.harm_search import search_budget
from eclm.pipelines.validated_merge import Evaluation, MergeReport, ValidatedMerge


@pytest.fixture(scope="module")
def modular():
    return modularize("resnet18", modules_per_layer=2, num_classes=10, channels=(8, 16, 32, 64)).eval()


def _spec(model, module: int) -> SubModelSpec:
    return SubModelSpec(model_id=model.model_id, groups=[(module,)] * len(model.layers))


def _update(model, device: str, module: int, shift: float, num_samples: int = 50) -> ModuleUpdate:
    """The sub-model holding ``module`` in every layer, with every float tensor moved by ``shift``."""
    spec = _spec(model, module)
    state = {k: (v + shift if v.is_floating_point() else v.clone()) for k, v in model.extract(spec).state_dict().items()}
    importance = [[0.5, 0.5] for _ in model.layers]
    return ModuleUpdate(device, spec, state, importance, num_samples)


def _names(model):
    return lambda spec: set(model.extract(spec).state_dict())


def _scripted(cloud_copy: dict, table: dict):
    """Evaluator answering ``table["before"]`` for the unchanged cloud state, else
    ``table[frozenset(device ids merged)]``; records every call."""
    calls: list[tuple[str, frozenset]] = []

    def run(state, updates) -> Evaluation:
        ids = frozenset(u.device_id for u in updates)
        unchanged = state.keys() == cloud_copy.keys() and all(torch.equal(state[k], cloud_copy[k]) for k in state)
        key = "before" if unchanged else ids
        calls.append(("before" if unchanged else "candidate", ids))
        overall, per_device = table[key]
        return Evaluation(overall, {d: per_device for d in ids})

    run.calls = calls
    return run


def _run(model, pipeline, updates, given=None):
    cloud_state = model.backbone.state_dict()
    given = given if given is not None else {u.device_id: u.spec for u in updates}
    return cloud_state, pipeline.run(cloud_state, model.layers, updates, given, _names(model))


def _module_slice_equal(model, state_a, state_b, module: int) -> bool:
    """Whether the slices of ``module`` in every module layer agree between two full states."""
    for key, a in state_a.items():
        owner = tensor_owner(model.layers, key)
        if owner is None:
            continue
        idx, rel = owner
        dim, full_owner = model.layers[idx].sliced[rel]
        pos = (full_owner == module).nonzero().flatten()
        if not torch.equal(a.index_select(dim, pos), state_b[key].index_select(dim, pos)):
            return False
    return True


def _snapshot(model) -> dict:
    return {k: v.clone() for k, v in model.backbone.state_dict().items()}


def test_accept_merges_every_device_into_its_own_modules(modular):
    before = _snapshot(modular)
    good, other = _update(modular, "good", 0, 0.01), _update(modular, "other", 1, -0.01)
    evaluator = _scripted(before, {"before": (0.80, 0.7), frozenset({"good", "other"}): (0.81, 0.7)})
    _, (state, report) = _run(modular, ValidatedMerge(evaluate=evaluator), [good, other])

    assert report.decision == "accept" and sorted(report.accepted) == ["good", "other"]
    assert report.rejected == {} and "within tolerance" in report.reason
    assert report.cloud_acc_before == 0.80 and report.cloud_acc_after == 0.81
    assert state is not None
    # Each device's weights land exactly in the module slices it holds (single holder -> weight 1).
    key = next(k for k in state if tensor_owner(modular.layers, k) and k.endswith("conv1.weight"))
    idx, rel = tensor_owner(modular.layers, key)
    dim, owner = modular.layers[idx].sliced[rel]
    got0 = state[key].index_select(dim, (owner == 0).nonzero().flatten())
    got1 = state[key].index_select(dim, (owner == 1).nonzero().flatten())
    assert torch.equal(got0, good.state[key])
    assert torch.equal(got1, other.state[key])
    assert not _module_slice_equal(modular, state, before, 0)


def test_partial_accept_excludes_the_harmful_device_and_records_why(modular):
    before = _snapshot(modular)
    good, bad = _update(modular, "good", 0, 0.01), _update(modular, "bad", 1, 0.02)
    evaluator = _scripted(before, {
        "before": (0.80, 0.7),
        frozenset({"good", "bad"}): (0.60, 0.7),  # the pair drops the cloud by 0.2 > tolerance
        frozenset({"good"}): (0.80, 0.7),
        frozenset({"bad"}): (0.55, 0.7),
    })
    _, (state, report) = _run(modular, ValidatedMerge(evaluate=evaluator, tolerance=0.02), [good, bad])

    assert report.decision == "partial"
    assert report.accepted == ["good"]
    assert set(report.rejected) == {"bad"} and report.rejected["bad"].startswith("harmful:")
    assert "0.6000" in report.rejected["bad"]  # the failing accuracy is in the reason
    assert "excluded ['bad']" in report.reason
    assert state is not None
    # The harmful device's modules stay as the cloud had them; the good one's changed.
    assert _module_slice_equal(modular, state, before, 1)
    assert not _module_slice_equal(modular, state, before, 0)


def test_device_tolerance_excludes_a_device_that_loses_on_its_own_classes(modular):
    before = _snapshot(modular)
    a, b = _update(modular, "a", 0, 0.01), _update(modular, "b", 1, 0.01)

    def run(state, updates):
        ids = {u.device_id for u in updates}
        unchanged = all(torch.equal(state[k], before[k]) for k in state)
        per = {d: 0.9 for d in ids}
        harmed = not unchanged and "b" in ids
        if harmed and "a" in ids:
            per["a"] = 0.5  # merging b hurts a's classes while the overall number barely moves
        return Evaluation(0.79 if harmed else 0.80, per)

    _, (state, report) = _run(modular, ValidatedMerge(evaluate=run, device_tolerance=0.05), [a, b])
    assert report.decision == "partial" and report.accepted == ["a"]
    assert "device a accuracy" in report.rejected["b"]


def test_reject_returns_none_and_leaves_the_cloud_state_bit_identical(modular):
    before = _snapshot(modular)
    a, b = _update(modular, "a", 0, 0.05), _update(modular, "b", 1, 0.05)
    evaluator = _scripted(before, {
        "before": (0.80, 0.7),
        frozenset({"a", "b"}): (0.40, 0.7),
        frozenset({"a"}): (0.50, 0.7),
        frozenset({"b"}): (0.45, 0.7),
    })
    cloud_state, (state, report) = _run(modular, ValidatedMerge(evaluate=evaluator), [a, b])

    assert state is None
    assert report.decision == "reject" and report.accepted == []
    assert set(report.rejected) == {"a", "b"} and all(r.startswith("harmful:") for r in report.rejected.values())
    assert report.reason == "no subset of the updates keeps the cloud model within tolerance"
    assert cloud_state.keys() == before.keys()
    assert all(torch.equal(cloud_state[k], before[k]) for k in before)
    assert all(torch.equal(v, before[k]) for k, v in modular.backbone.state_dict().items())


def test_reference_accuracy_raises_the_floor(modular):
    # Candidate loses only 0.01 against the current model, but 0.11 against the best version.
    before = _snapshot(modular)
    a = _update(modular, "a", 0, 0.01)
    table = {"before": (0.70, 0.7), frozenset({"a"}): (0.69, 0.7)}
    ok = ValidatedMerge(evaluate=_scripted(before, table), tolerance=0.02)
    floored = ValidatedMerge(evaluate=_scripted(before, table), tolerance=0.02, reference_accuracy=0.80)
    assert _run(modular, ok, [a])[1][1].decision == "accept"
    state, report = _run(modular, floored, [a])[1]
    assert state is None and report.decision == "reject" and "floor 0.7800" in report.rejected["a"]


def test_too_few_valid_updates_reject_without_evaluating(modular):
    before = _snapshot(modular)
    evaluator = _scripted(before, {})
    a = _update(modular, "a", 0, 0.01)
    state, report = _run(modular, ValidatedMerge(evaluate=evaluator, min_updates=2), [a])[1]
    assert state is None and report.decision == "reject"
    assert "fewer than min_updates=2" in report.reason
    assert evaluator.calls == []


@pytest.mark.parametrize("server_lr", [1.0, 0.5, 0.25])
def test_server_lr_steps_part_of_the_way(modular, server_lr):
    before = _snapshot(modular)
    a = _update(modular, "a", 0, 0.04)
    table = {"before": (0.8, 0.7), frozenset({"a"}): (0.8, 0.7)}
    state, report = _run(modular, ValidatedMerge(evaluate=_scripted(before, table), server_lr=server_lr), [a])[1]
    assert report.decision == "accept"
    key = "fc.weight"  # unsplit tensor: merged = a's weights exactly, then the server step
    torch.testing.assert_close(state[key], before[key] + server_lr * 0.04, rtol=0, atol=1e-6)


def test_norm_statistics_are_kept_unless_merged(modular):
    before = _snapshot(modular)
    a = _update(modular, "a", 0, 0.01)
    table = {"before": (0.8, 0.7), frozenset({"a"}): (0.8, 0.7)}
    kept = _run(modular, ValidatedMerge(evaluate=_scripted(before, table)), [a])[1][0]
    merged = _run(modular, ValidatedMerge(evaluate=_scripted(before, table), merge_norm_statistics=True), [a])[1][0]
    assert torch.equal(kept["bn1.running_mean"], before["bn1.running_mean"])
    assert torch.equal(merged["bn1.running_mean"], before["bn1.running_mean"] + 0.01)


def test_finalize_runs_on_every_candidate_before_evaluation(modular):
    seen_marks: list[bool] = []

    def finalize(state):
        return dict(state, **{"fc.bias": torch.full_like(state["fc.bias"], 7.0)})

    def run(state, updates):
        seen_marks.append(bool((state["fc.bias"] == 7.0).all()))
        return Evaluation(0.8, {})

    a = _update(modular, "a", 0, 0.01)
    state, report = _run(modular, ValidatedMerge(evaluate=run, finalize=finalize), [a])[1]
    assert report.decision == "accept" and bool((state["fc.bias"] == 7.0).all())
    # The baseline is finalized like every candidate, so finalize's own effect is not the devices' harm.
    assert seen_marks == [True, True]


def test_robust_aggregator_is_used_for_shared_tensors(modular):
    before = _snapshot(modular)
    honest = [_update(modular, f"h{i}", 0, 0.01 * (i + 1)) for i in range(3)]
    poison = _update(modular, "p", 0, 1e3)  # would fail integrity; bypass by a huge norm bound
    table = {"before": (0.8, 0.7), frozenset({"h0", "h1", "h2", "p"}): (0.8, 0.7)}
    pipeline = ValidatedMerge(evaluate=_scripted(before, table), aggregator=CoordinateMedian(),
                              max_relative_norm=1e9)
    state, report = _run(modular, pipeline, [*honest, poison])[1]
    assert report.decision == "accept"
    # Median of {+.01, +.02, +.03, +1000} per coordinate is +.025: the outlier has no pull.
    torch.testing.assert_close(state["fc.weight"], before["fc.weight"] + 0.025, rtol=0, atol=1e-5)


def test_report_is_a_plain_dict():
    report = MergeReport(decision="reject", reason="x", rejected={"d": "why"})
    assert report.to_dict() == {
        "decision": "reject", "reason": "x", "accepted": [], "rejected": {"d": "why"},
        "cloud_acc_before": None, "cloud_acc_after": None, "device_acc_before": {}, "device_acc_after": {},
        "server_step": None, "screen": {}, "paired": None, "candidates": 0, "plain_finalize_reason": None,
    }


def test_class_rows_merge_the_head_only_over_devices_holding_each_class(modular):
    before = _snapshot(modular)
    a, b = _update(modular, "a", 0, 0.01), _update(modular, "b", 1, 0.03)
    a.classes, b.classes = [0, 1, 2], [2, 3]
    table = {"before": (0.8, 0.7), frozenset({"a", "b"}): (0.8, 0.7)}
    pipeline = ValidatedMerge(evaluate=_scripted(before, table), class_rows=("fc.weight", "fc.bias"))
    state, report = _run(modular, pipeline, [a, b])[1]
    assert report.decision == "accept"
    for key in ("fc.weight", "fc.bias"):
        rows = state[key]
        assert torch.equal(rows[[0, 1]], a.state[key][[0, 1]])  # only a holds these classes
        assert torch.equal(rows[3], b.state[key][3])
        torch.testing.assert_close(rows[2], (a.state[key][2] + b.state[key][2]) / 2)  # equal samples
        assert torch.equal(rows[4:], before[key][4:])  # nobody holds classes 4..9: untouched


@pytest.mark.parametrize("devices", [2, 4, 7])
def test_a_merge_where_every_candidate_fails_costs_a_logarithmic_number_of_candidates(modular, devices):
    calls = []
    updates = [_update(modular, f"d{i}", i % 2, 1e-4) for i in range(devices)]
    baseline = {"seen": False}

    def scripted(state, ups):  # the baseline is fine, every merged candidate is too harmful
        if not baseline["seen"]:
            baseline["seen"] = True
            return Evaluation(0.9, {})
        calls.append(len(ups))
        return Evaluation(0.1, {})

    cloud, (state, report) = _run(modular, ValidatedMerge(evaluate=scripted), updates)
    assert state is None and report.decision == "reject"
    assert sorted(report.rejected) == sorted(u.device_id for u in updates)
    # the full merge + the group testing's budget (default search_budget 4 x log2 k)
    assert len(calls) == report.candidates <= 1 + search_budget(devices, 4.0)


def _step_scored(cloud_copy: dict, shift: float, slope: float, base: float = 0.9):
    """Evaluator whose overall accuracy falls linearly with the step taken towards an update that
    moves ``fc.weight`` by ``shift``: ``base - slope * step``."""

    def run(state, updates) -> Evaluation:
        step = float((state["fc.weight"] - cloud_copy["fc.weight"]).mean()) / shift
        return Evaluation(base - slope * step, {})

    return run


@pytest.mark.parametrize(("backoff", "expected_step"), [(3, 0.125), (4, 0.125), (2, None), (0, None)])
def test_failing_candidate_retries_shorter_server_steps(modular, backoff, expected_step):
    cloud_copy = _snapshot(modular)
    update = _update(modular, "d", 0, 0.1)
    # Tolerance 0.03 with slope 0.2 admits steps up to 0.15: from 1.0, halving reaches 0.125 after 3.
    pipeline = ValidatedMerge(evaluate=_step_scored(cloud_copy, 0.1, 0.2), tolerance=0.03, server_lr=1.0,
                              step_backoff=backoff, max_relative_norm=1e9)
    cloud_state, (state, report) = _run(modular, pipeline, [update])
    assert all(torch.equal(cloud_state[k], cloud_copy[k]) for k in cloud_state)  # input untouched
    if expected_step is None:
        assert state is None and report.decision == "reject"
        assert report.server_step is None
        if backoff:
            assert f"even at server step {1.0 / 2**backoff:g}" in report.rejected["d"]
        return
    assert report.decision == "accept" and report.server_step == expected_step
    assert "at server step 0.125" in report.reason
    # The accepted state is the cloud moved 0.125 of the way to the merged weights.
    torch.testing.assert_close(state["fc.weight"], cloud_copy["fc.weight"] + 0.125 * 0.1, rtol=0, atol=1e-6)


def test_backoff_is_tried_before_devices_are_excluded(modular):
    cloud_copy = _snapshot(modular)
    updates = [_update(modular, "a", 0, 0.1), _update(modular, "b", 1, 0.1)]
    pipeline = ValidatedMerge(evaluate=_step_scored(cloud_copy, 0.1, 0.2), tolerance=0.06, server_lr=0.5,
                              step_backoff=1, max_relative_norm=1e9)
    _, (state, report) = _run(modular, pipeline, updates)
    # Step 0.5 costs 0.1 > tolerance 0.06; step 0.25 costs 0.05: both devices stay in.
    assert report.decision == "accept" and sorted(report.accepted) == ["a", "b"] and report.server_step == 0.25
    assert state is not None


@pytest.mark.parametrize("acceptance", ["paired", "threshold"])
@pytest.mark.parametrize("plain", [True, False])
def test_a_finalize_draw_that_fails_the_current_model_against_the_best_is_not_counted_against_the_devices(
        modular, acceptance, plain):
    """The cloud's own finalize step (its repair fine-tune) ruins whatever it finalizes this round:
    every candidate carries it, so without ``plain_finalize`` a good update is rejected against the
    best accepted version; with it the merge falls back and accepts the update, unruined."""
    cloud = _snapshot(modular)
    key = next(k for k, v in cloud.items() if v.is_floating_point())

    def ruin(state):
        return {**state, key: state[key] + 100.0}

    def evaluate(state, updates) -> Evaluation:
        ruined = bool((state[key] - cloud[key]).abs().max() > 50)
        merged = any(not torch.equal(state[k], cloud[k]) for k in state if k != key)
        right = 60 if ruined else 81 if merged else 80
        correct = torch.arange(100) < right
        return Evaluation(right / 100, {u.device_id: 0.8 for u in updates}, correct, {})

    best = torch.arange(100) < 80
    pipeline = ValidatedMerge(evaluate=evaluate, acceptance=acceptance, finalize=ruin,
                              plain_finalize=(lambda s: dict(s)) if plain else None,
                              reference_correct=best, reference_accuracy=0.80)
    state, report = _run(modular, pipeline, [_update(modular, "good", 0, 0.01)])[1]
    if not plain:
        assert state is None and report.decision == "reject" and report.plain_finalize_reason is None
        return
    assert report.decision == "accept" and report.cloud_acc_before == 0.80 and report.cloud_acc_after == 0.81
    assert report.plain_finalize_reason.startswith("the current model finalized fails against the best")
    assert float((state[key] - cloud[key]).abs().max()) < 1  # the ruining step was not applied to what is accepted


def test_a_finalize_step_that_keeps_the_current_model_level_with_the_best_is_used(modular):
    cloud = _snapshot(modular)
    key = next(k for k, v in cloud.items() if v.is_floating_point())
    used = []

    def mark(state):
        used.append("finalize")
        return {**state, key: state[key] + 1e-3}

    table = {"before": (0.80, 0.8), frozenset({"good"}): (0.81, 0.8)}
    evaluator = _scripted(cloud, table)

    def evaluate(state, updates):
        return evaluator({**state, key: state[key] - 1e-3}, updates)

    pipeline = ValidatedMerge(evaluate=evaluate, acceptance="threshold", finalize=mark,
                              plain_finalize=lambda s: used.append("plain") or dict(s), reference_accuracy=0.80)
    state, report = _run(modular, pipeline, [_update(modular, "good", 0, 0.01)])[1]
    assert report.decision == "accept" and report.plain_finalize_reason is None and "plain" not in used
