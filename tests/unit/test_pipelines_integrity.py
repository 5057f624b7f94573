"""Integrity checks on device updates: each malformed update is rejected with its reason.

Checked twice: directly with :func:`check_update`, and inside :class:`ValidatedMerge`, where a
malformed update must land in ``report.rejected`` and never touch the cloud state.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from eclm.modules import ModuleUpdate, SubModelSpec, modularize
from eclm.pipelines.integrity import check_update
from eclm.pipelines.validated_merge import Evaluation, ValidatedMerge

BLOCK_KEY = "layer2.0.conv1.weight"  # split into modules (output channels)


@pytest.fixture(scope="module")
def modular():
    return modularize("resnet18", modules_per_layer=2, num_classes=10, channels=(8, 16, 32, 64)).eval()


def _spec(model, groups) -> SubModelSpec:
    return SubModelSpec(model_id=model.model_id, groups=[groups] * len(model.layers))


def _honest(model, device: str = "d", groups=(0,)) -> ModuleUpdate:
    """An update a well-behaved device could send: its sub-model, slightly trained."""
    spec = _spec(model, groups)
    gen = torch.Generator().manual_seed(1)
    state = {}
    for k, v in model.extract(spec).state_dict().items():
        state[k] = v + 1e-3 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone()
    return ModuleUpdate(device, spec, state, [[0.6, 0.4] for _ in model.layers], 40)


def _with_state(u: ModuleUpdate, change: Callable[[dict], None]) -> ModuleUpdate:
    state = dict(u.state)
    change(state)
    return ModuleUpdate(u.device_id, u.spec, state, u.importance, u.num_samples)


def _nan(s):
    s[BLOCK_KEY] = s[BLOCK_KEY].clone()
    s[BLOCK_KEY][0, 0, 0, 0] = float("nan")


def _inf(s):
    s["fc.bias"] = s["fc.bias"].clone()
    s["fc.bias"][3] = float("inf")


def _shape(s):
    w = s[BLOCK_KEY]
    s[BLOCK_KEY] = torch.zeros(w.shape[0] + 1, *w.shape[1:])


def _dtype(s):
    s["fc.weight"] = s["fc.weight"].double()


def _missing(s):
    del s["fc.bias"]


def _extra(s):
    s["bogus.weight"] = torch.zeros(3)


def _huge(s):
    for k, v in s.items():
        if v.is_floating_point():
            s[k] = v * 1e3


STATE_CASES = [
    ("nan", _nan, "non-finite values"),
    ("inf", _inf, "fc.bias: non-finite values"),
    ("wrong shape", _shape, f"{BLOCK_KEY}: shape"),
    ("wrong dtype", _dtype, "fc.weight: dtype torch.float64 != torch.float32"),
    ("missing key", _missing, "missing ['fc.bias']"),
    ("extra key", _extra, "unexpected ['bogus.weight']"),
    ("huge norm x1e3", _huge, "exceeds bound"),
]


def _check(model, u: ModuleUpdate, given: SubModelSpec | None = None, max_relative_norm: float = 0.5) -> list[str]:
    return check_update(
        u, model.backbone.state_dict(), model.layers, given or u.spec,
        set(model.extract(u.spec).state_dict()), max_relative_norm=max_relative_norm,
    )


def test_an_honest_update_passes(modular):
    assert _check(modular, _honest(modular)) == []


def test_a_subset_of_the_given_spec_passes(modular):
    # After a local swap a device uploads fewer modules than it was given.
    given = _spec(modular, (0, 1))
    assert _check(modular, _honest(modular, groups=(1,)), given=given) == []


@pytest.mark.parametrize(("case", "change", "reason"), STATE_CASES, ids=[c[0] for c in STATE_CASES])
def test_malformed_state_is_reported(modular, case, change, reason):
    problems = _check(modular, _with_state(_honest(modular), change))
    assert problems, case
    assert any(reason in p for p in problems), problems


def test_the_norm_bound_scales_with_max_relative_norm(modular):
    u = _with_state(_honest(modular), lambda s: s.update(
        {k: v * 1.5 for k, v in s.items() if v.is_floating_point()}))  # change = 0.5 x the weights
    assert any("exceeds bound" in p for p in _check(modular, u, max_relative_norm=0.4))
    assert _check(modular, u, max_relative_norm=0.6) == []


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("importance", [[0.5, 0.5]], "importance summary has the wrong shape"),
        ("importance", "nan", "importance summary is not finite"),
        ("num_samples", 0, "num_samples must be >= 1"),
    ],
)
def test_bad_metadata_is_reported(modular, field, value, reason):
    u = _honest(modular)
    if value == "nan":
        value = [[float("nan"), 0.5] for _ in modular.layers]
    setattr(u, field, value)
    assert any(reason in p for p in _check(modular, u))


def test_modules_never_given_are_reported(modular):
    u = _honest(modular, groups=(1,))
    assert any("never given" in p for p in _check(modular, u, given=_spec(modular, (0,))))


def test_a_spec_of_another_model_is_reported(modular):
    u = _honest(modular)
    names = set(u.state)
    u.spec = SubModelSpec(model_id="0" * 16, groups=u.spec.groups)
    problems = check_update(u, modular.backbone.state_dict(), modular.layers, _spec(modular, (0,)), names,
                            max_relative_norm=0.5)
    assert problems == [f"spec is for model {'0' * 16}, cloud is {modular.model_id}"]


@pytest.mark.parametrize(
    ("case", "groups", "reason"),
    [("foreign model", None, "spec is for model"), ("module out of range", [(5,)] * 8, "out of range"),
     ("too few layers", [(0,)] * 3, "spec has 3 layers")],
)
def test_a_spec_that_does_not_fit_rejects_only_that_device(modular, case, groups, reason):
    # One device's nonsense spec must not sink the honest devices' merge.
    good, odd = _honest(modular, "good"), _honest(modular, "odd")
    odd.spec = SubModelSpec(model_id="0" * 16 if groups is None else modular.model_id,
                            groups=odd.spec.groups if groups is None else groups)
    state, report = ValidatedMerge(evaluate=lambda s, u: Evaluation(0.8, {})).run(
        modular.backbone.state_dict(), modular.layers, [good, odd], {"good": good.spec, "odd": good.spec},
        lambda spec: set(modular.extract(spec).state_dict()))
    assert state is not None and report.accepted == ["good"], case
    assert report.rejected["odd"].startswith("integrity: spec does not fit") and reason in report.rejected["odd"]


def test_validated_merge_rejects_each_malformed_update_with_its_reason(modular):
    before = {k: v.clone() for k, v in modular.backbone.state_dict().items()}
    good = _honest(modular, "good")
    bad = {
        f"bad-{case.replace(' ', '-')}": _with_state(_honest(modular, f"bad-{case.replace(' ', '-')}"), change)
        for case, change, _ in STATE_CASES
    }
    for name, u in bad.items():
        u.device_id = name
    stranger = _honest(modular, "stranger")  # no sub-model was ever derived for it
    overreach = _honest(modular, "overreach", groups=(0, 1))  # holds modules it was not given
    duplicate = _honest(modular, "good")
    updates = [good, *bad.values(), stranger, overreach, duplicate]
    given = {u.device_id: u.spec for u in [good, *bad.values()]} | {"overreach": _spec(modular, (0,))}

    evaluated: list[set[str]] = []

    def evaluate(state, ups):
        evaluated.append({u.device_id for u in ups})
        return Evaluation(0.8, {})

    cloud_state = modular.backbone.state_dict()
    state, report = ValidatedMerge(evaluate=evaluate, max_relative_norm=0.5).run(
        cloud_state, modular.layers, updates, given, lambda spec: set(modular.extract(spec).state_dict()))

    assert report.decision == "partial" and report.accepted == ["good"]
    for (case, _, reason), name in zip(STATE_CASES, bad, strict=True):
        assert report.rejected[name].startswith("integrity: ") and reason in report.rejected[name], case
    assert report.rejected["stranger"].startswith("unknown device")
    assert "never given" in report.rejected["overreach"]
    assert "duplicate" in report.rejected["good (duplicate upload)"]  # the second upload; the first was merged
    assert "good" not in report.rejected
    assert all(ids == {"good"} for ids in evaluated)  # nothing malformed reached evaluation
    assert all(torch.equal(cloud_state[k], before[k]) for k in before)
    assert state is not None and torch.isfinite(state["fc.weight"]).all()


def test_only_malformed_updates_reject_the_merge_and_keep_the_cloud(modular):
    before = {k: v.clone() for k, v in modular.backbone.state_dict().items()}
    updates = [_with_state(_honest(modular, f"d{i}"), change) for i, (_, change, _) in enumerate(STATE_CASES)]
    for i, u in enumerate(updates):
        u.device_id = f"d{i}"
    cloud_state = modular.backbone.state_dict()
    state, report = ValidatedMerge(evaluate=lambda s, u: Evaluation(1.0, {}), max_relative_norm=0.5).run(
        cloud_state, modular.layers, updates, {u.device_id: u.spec for u in updates},
        lambda spec: set(modular.extract(spec).state_dict()))
    assert state is None and report.decision == "reject"
    assert sorted(report.rejected) == sorted(u.device_id for u in updates)
    assert "0 valid update(s)" in report.reason
    assert all(torch.equal(cloud_state[k], before[k]) for k in before)


@pytest.mark.parametrize("claimed, ok", [(40, True), (150, True), (151, False), (10**9, False)])
def test_a_device_cannot_claim_more_samples_than_it_can_hold(modular, claimed, ok):
    update = _honest(modular)
    update.num_samples = claimed
    problems = check_update(update, modular.backbone.state_dict(), modular.layers, update.spec,
                            set(update.state), max_relative_norm=0.5, max_samples=150)
    assert (problems == []) == ok
    if not ok:
        assert any("exceeds the plausible maximum 150" in p for p in problems)
