"""The bounded search for harmful updates: group testing within a candidate budget.

Pure tests of :func:`~eclm.pipelines.harm_search.isolate_harmful` over every placement of one or
two harmful items, and :class:`~eclm.pipelines.validated_merge.ValidatedMerge` on k = 4, 16, 64
hand-built updates of a tiny modular ResNet with an evaluator that fails any candidate holding a
harmful device: the candidate count stays within ``2 (step_backoff + 1) - 1 + ceil(search_budget
x log2 k)`` and a single harmful update is found and excluded, every other one merged.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from eclm.modules import ModuleUpdate, SubModelSpec, modularize
from eclm.pipelines.harm_search import isolate_harmful, search_budget
from eclm.pipelines.validated_merge import Evaluation, ValidatedMerge


def _failing_with(harmful: set[int]):
    tested: list[list[int]] = []

    def test(items):
        tested.append(list(items))
        return ("holds a harmful item" if harmful & set(items) else None), sorted(items)

    return test, tested


@pytest.mark.parametrize("k", [4, 16, 64])
def test_one_harmful_item_is_always_isolated_within_two_log2_k_candidates(k):
    for bad in range(k):
        test, tested = _failing_with({bad})
        found = isolate_harmful(list(range(k)), test, "all failed", budget=search_budget(k, 2.0))
        assert found.kept == [i for i in range(k) if i != bad] and found.payload == found.kept
        assert list(found.harmful) == [bad] and found.unchecked == []
        assert found.candidates == len(tested) <= 2 * (k.bit_length() - 1)
        assert all(bad not in t for t in tested[-1:])  # the last passing candidate is the kept set


@pytest.mark.parametrize("k", [4, 16, 64])
def test_two_harmful_items_never_cost_more_than_the_budget_and_are_never_kept(k):
    budget = search_budget(k, 4.0)
    for pair in itertools.combinations(range(k), 2):
        test, tested = _failing_with(set(pair))
        found = isolate_harmful(list(range(k)), test, "all failed", budget)
        assert found.candidates == len(tested) <= budget
        assert not set(pair) & set(found.kept)
        assert set(found.kept) | set(found.harmful) | set(found.unchecked) == set(range(k))
        assert set(found.harmful) <= set(pair)  # only a harmful item is ever called harmful


def test_an_exhausted_budget_excludes_what_was_not_cleared():
    test, tested = _failing_with({0, 5, 9, 13})
    found = isolate_harmful(list(range(16)), test, "all failed", budget=3)
    assert len(tested) == 3 and found.unchecked
    assert set(found.kept).isdisjoint({0, 5, 9, 13})


@pytest.fixture(scope="module")
def modular():
    return modularize("resnet18", modules_per_layer=2, num_classes=10, channels=(8, 8, 16, 16)).eval()


def _updates(model, k: int) -> list[ModuleUpdate]:
    state = {m: model.extract(SubModelSpec(model_id=model.model_id, groups=[(m,)] * len(model.layers))).state_dict() for m in (0, 1)}
    out = []
    for i in range(k):
        m = i % 2
        moved = {n: v + 1e-3 * (i + 1) if v.is_floating_point() else v.clone() for n, v in state[m].items()}
        out.append(ModuleUpdate(f"d{i}", SubModelSpec(model_id=model.model_id, groups=[(m,)] * len(model.layers)), moved,
                                [[0.5, 0.5] for _ in model.layers], 50))
    return out


@pytest.mark.parametrize(("k", "harmful"), [(4, {"d3"}), (16, {"d0"}), (16, {"d9"}), (64, {"d63"}),
                                            (64, {"d7", "d40"})])
@pytest.mark.parametrize("backoff", [0, 2])
def test_the_merge_isolates_harmful_updates_within_the_candidate_bound(modular, k, harmful, backoff):
    updates = _updates(modular, k)
    calls: list[frozenset] = []

    def evaluate(state, ups):  # the first call is the baseline; a candidate fails if it merges a harmful update
        ids = frozenset(u.device_id for u in ups)
        if not calls:
            calls.append(frozenset())
            return Evaluation(0.9, {})
        calls.append(ids)
        return Evaluation(0.5 if ids & harmful else 0.9, {})

    pipeline = ValidatedMerge(evaluate=evaluate, step_backoff=backoff, max_relative_norm=1e9)
    cloud = modular.backbone.state_dict()
    state, report = pipeline.run(cloud, modular.layers, updates, {u.device_id: u.spec for u in updates},
                                 lambda spec: set(modular.extract(spec).state_dict()))

    steps = backoff + 1
    assert report.candidates == len(calls) - 1 <= 2 * steps - 1 + search_budget(k, 4.0)
    assert report.decision == "partial" and state is not None
    assert harmful <= set(report.rejected) and not harmful & set(report.accepted)
    assert all(report.rejected[d].startswith("harmful:") for d in harmful)
    if len(harmful) == 1:  # a single harmful update: every other one is merged, at the longest step
        assert sorted(report.accepted) == sorted(u.device_id for u in updates if u.device_id not in harmful)
        assert report.server_step == pipeline.server_lr
    assert not torch.equal(state["fc.weight"], cloud["fc.weight"])
