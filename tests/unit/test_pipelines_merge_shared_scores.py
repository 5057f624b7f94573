"""The merge scores a sub-model under an environment on a set of classes once per candidate, however
many devices share the three, and the shared scores are the ones each device would get alone
(in-process, no Ray)."""

from __future__ import annotations

import pytest
import torch

from eclm.modules.merge import ModuleUpdate
from eclm.modules.submodel_cache import SubModelCache
from eclm.pipelines.cloud_service import CloudService
from eclm.pipelines.environments import ProxyEnvironments
from eclm.pipelines.merge_workers import PerThread
from tests.unit.test_pipelines_sparse_exchange import config

torch.set_num_threads(1)

ENV = ("gaussian_noise", 3)


@pytest.fixture()
def counted(monkeypatch):
    """Every proxy evaluation, as ``(env, classes)``."""
    calls: list[tuple] = []
    scores = ProxyEnvironments.scores

    def counting(self, model, env, classes=None):
        calls.append((env, None if classes is None else tuple(classes)))
        return scores(self, model, env, classes)

    monkeypatch.setattr(ProxyEnvironments, "scores", counting)
    return calls


def _setup(tmp_path):
    cloud = CloudService(config(tmp_path))
    full = cloud.model.full_spec()
    small = full.model_copy(update={"groups": tuple(g[:1] for g in full.groups)})
    classes = {"a": [1, 2, 5], "b": [1, 2, 5], "c": [1, 2, 5], "d": [3, 4, 6]}
    envs = {"a": ENV, "b": ENV, "c": None, "d": ENV}
    specs = {"a": small, "b": small, "c": small, "d": small}
    updates = [ModuleUpdate(device_id=d, spec=specs[d], state={}, importance=[], num_samples=30, classes=classes[d])
               for d in classes]
    return cloud, classes, envs, updates


def test_a_candidate_is_scored_once_per_spec_environment_and_classes(tmp_path, counted):
    cloud, classes, envs, updates = _setup(tmp_path)
    state = cloud.model.backbone.state_dict()
    run, _ = cloud._evaluator(classes, (ENV,), envs)
    shared = run(state, updates)
    # clean and ENV on the full model, then a and b together (same spec, environment, classes), c, d
    assert len(counted) == 2 + 3
    assert torch.equal(shared.per_device_correct["a"], shared.per_device_correct["b"])
    assert shared.per_device["a"] == shared.per_device["b"]
    for u in updates:  # what each device gets alone
        counted.clear()
        alone = run(state, [u])
        assert len(counted) == 3
        assert torch.equal(alone.per_device_correct[u.device_id], shared.per_device_correct[u.device_id])
        assert alone.per_device[u.device_id] == shared.per_device[u.device_id]
        assert torch.equal(alone.correct, shared.correct) and alone.overall == shared.overall


def test_the_current_weights_own_class_scores_are_shared_and_equal_a_fresh_evaluation(tmp_path, counted):
    cloud, classes, envs, updates = _setup(tmp_path)
    cloud._merge_subs = PerThread(lambda: SubModelCache(cloud.model))  # as during a merge
    state = cloud.model.backbone.state_dict()
    _, own = cloud._evaluator(classes, (ENV,), envs, cloud_state=state)
    got = {u.device_id: own(state, u) for u in updates}
    assert len(counted) == 3  # a and b share one evaluation
    assert got["a"] is got["b"]
    other = {k: v.clone() for k, v in state.items()}  # equal weights, another state: never shared
    counted.clear()
    fresh = {u.device_id: own(other, u) for u in updates}
    assert len(counted) == len(updates)
    for d in got:
        assert all(torch.equal(x, y) for x, y in zip(got[d], fresh[d], strict=True))
