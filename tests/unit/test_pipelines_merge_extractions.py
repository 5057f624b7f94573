"""The merge and the derivation extract each sub-model of one cloud state once per spec, and
decide exactly as when every call extracts its own (in-process, no Ray)."""

from __future__ import annotations

from collections import Counter

import torch

from eclm.modules import unpack_state
from eclm.modules.modular import ModularModel
from eclm.modules.submodel_cache import SubModelCache
from eclm.pipelines.cloud_service import CloudService
from eclm.pipelines.edge_service import EdgeService
from tests.unit.test_pipelines_exchange import merge, ship
from tests.unit.test_pipelines_sparse_exchange import config

torch.set_num_threads(1)


def campaign(tmp_path, cycles: int = 2, workers: int = 1):
    """Three devices (two of the same resources) for ``cycles`` cycles, the merge on ``workers``
    threads (each thread extracts its own sub-models); the outcomes and the final cloud state."""
    cfg = config(tmp_path)
    cfg = cfg.model_copy(update={
        "data": cfg.data.model_copy(update={"num_devices": 3}),
        "devices": [*cfg.devices, cfg.devices[1].model_copy(update={"name": "d2"})],
        "merge": cfg.merge.model_copy(update={"validate_environments": True, "workers": workers}),
    })
    cloud = CloudService(cfg)
    edges = [EdgeService(cfg, i) for i in range(3)]
    outcomes = []
    for _ in range(cycles):
        for e in edges:
            ship(cloud, e)
        outcomes.append(merge(cloud, *[(e, e.adapt()) for e in edges]))
    return outcomes, {k: v.clone() for k, v in cloud.model.backbone.state_dict().items()}, cloud


def test_a_merge_extracts_each_spec_of_the_current_weights_once_and_decides_as_without_the_cache(tmp_path, monkeypatch):
    calls: Counter = Counter()
    extract = ModularModel.extract

    def counted(self, spec, state=None):
        calls[(id(self), id(state), spec)] += 1
        return extract(self, spec, state)

    monkeypatch.setattr(ModularModel, "extract", counted)
    cached, cached_state, cloud = campaign(tmp_path / "a")
    # the cloud model's own weights (state=None): once per spec and merge, whatever phase asks
    own = {k: n for k, n in calls.items() if k[0] == id(cloud.model) and k[1] == id(None)}
    assert own and max(own.values()) <= 2  # two merges
    assert sum(calls.values()) > 0

    monkeypatch.setattr(SubModelCache, "module", lambda self, spec: self.model.extract(spec, self.state))
    calls.clear()
    plain, plain_state, _ = campaign(tmp_path / "b")
    assert sum(calls.values()) > sum(own.values())
    assert [o.model_dump(exclude={"seconds"}) for o in cached] == [o.model_dump(exclude={"seconds"}) for o in plain]
    assert cached_state.keys() == plain_state.keys()
    assert all(torch.equal(cached_state[k], plain_state[k]) for k in cached_state)


def test_the_cache_returns_what_extract_returns_and_keeps_it_within_its_bounds(tmp_path):
    cloud = CloudService(config(tmp_path))
    model = cloud.model
    full = model.full_spec()
    smaller = full.model_copy(update={"groups": tuple(g[:1] for g in full.groups)})
    cache = SubModelCache(model, size=1)
    for spec in (full, full, smaller, full):
        got = cache.state_dict(spec)
        want = model.extract(spec).state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    assert cache.extractions == 3  # size 1: the second full spec was a hit, the last one was evicted
    assert cache.names(smaller) == set(model.extract(smaller).state_dict())
    copy = cache.copy(smaller)
    with torch.no_grad():
        next(copy.parameters()).add_(1.0)
    assert not torch.equal(next(copy.parameters()), next(cache.module(smaller).parameters()))
    tiny = SubModelCache(model, max_bytes=0)  # always keeps the most recent one, nothing more
    tiny.module(full), tiny.module(smaller), tiny.module(smaller)
    assert tiny.extractions == 2


def test_derivation_shares_an_extraction_between_devices_of_one_spec_and_ships_the_same_weights(tmp_path, monkeypatch):
    cfg = config(tmp_path)
    cloud, edge = CloudService(cfg), EdgeService(cfg, 1)
    summary = edge.summary(cloud.selector_payload())
    first, second = cloud.derive(summary), cloud.derive(summary)
    assert cloud._submodels(cloud.version).extractions == 1
    monkeypatch.setattr(SubModelCache, "module", lambda self, spec: self.model.extract(spec, self.state))
    plain = cloud.derive(summary)
    for package in (second, plain):  # the header's metadata order is not fixed: compare the contents
        (got, spec, meta), (want, want_spec, want_meta) = unpack_state(package.payload), unpack_state(first.payload)
        assert (spec, meta) == (want_spec, want_meta) and got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in got)
