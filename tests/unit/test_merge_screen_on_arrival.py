"""Screening uploads on arrival (``merge.screen_on_arrival``): the cloud screens each upload while
the other devices still adapt, and the merge reuses that work only for the very same upload on the
very same weights, so it decides exactly as without it (in-process, no Ray)."""

from __future__ import annotations

import pytest
import torch

from eclm.campaign.messages import AttributedUpdate
from eclm.pipelines.cloud_service import CloudService
from eclm.pipelines.edge_service import EdgeService
from tests.unit.test_pipelines_exchange import ship
from tests.unit.test_pipelines_sparse_exchange import config

torch.set_num_threads(1)


def _config(tmp_path, **merge):
    cfg = config(tmp_path)
    return cfg.model_copy(update={
        "data": cfg.data.model_copy(update={"num_devices": 3}),
        "devices": [*cfg.devices, cfg.devices[1].model_copy(update={"name": "d2"})],
        "merge": cfg.merge.model_copy(update={"validate_environments": True, **merge}),
    })


def _attributed(edge: EdgeService, update) -> AttributedUpdate:
    return AttributedUpdate(channel=edge.name, issued=edge.spec, enrolled_classes=edge.classes, update=update)


def campaign(tmp_path, on_arrival: bool, cycles: int = 2):
    """Three devices for ``cycles`` cycles; with ``on_arrival`` each upload is screened when it
    arrives. Returns the outcomes, what each prescreen call kept, and the final cloud state."""
    cfg = _config(tmp_path)
    cloud = CloudService(cfg)
    edges = [EdgeService(cfg, i) for i in range(3)]
    outcomes, kept = [], []
    for _ in range(cycles):
        for e in edges:
            ship(cloud, e)
        uploads = [_attributed(e, e.adapt()) for e in edges]
        if on_arrival:
            kept.append([cloud.prescreen([u]) for u in uploads])
        outcomes.append(cloud.merge(uploads))
    return outcomes, kept, {k: v.clone() for k, v in cloud.model.backbone.state_dict().items()}


def _comparable(outcome) -> dict:
    return outcome.model_dump(exclude={"seconds", "details"})


def test_a_merge_after_screening_on_arrival_decides_and_merges_exactly_as_without(tmp_path):
    early, kept, early_state = campaign(tmp_path / "early", on_arrival=True)
    plain, _, plain_state = campaign(tmp_path / "plain", on_arrival=False)
    assert [_comparable(o) for o in early] == [_comparable(o) for o in plain]
    assert any(o.decision != "reject" for o in plain) and any(o.screen for o in plain)  # something to agree on
    assert kept == [[1, 1, 1], [1, 1, 1]]
    assert [o.details.get("screened_on_arrival") for o in early] == ["3", "3"]
    assert all("screened_on_arrival" not in o.details for o in plain)
    assert early_state.keys() == plain_state.keys() and all(torch.equal(early_state[k], plain_state[k])
                                                            for k in early_state)


@pytest.fixture()
def cycle(tmp_path):
    """A cloud, three devices that received their sub-models, and their uploads (not merged)."""
    cfg = _config(tmp_path)
    cloud = CloudService(cfg)
    edges = [EdgeService(cfg, i) for i in range(3)]
    for e in edges:
        ship(cloud, e)
    return cloud, edges, [_attributed(e, e.adapt()) for e in edges]


def test_screening_on_arrival_changes_nothing_of_the_cloud_and_an_upload_is_screened_once(cycle):
    cloud, _, uploads = cycle
    digest, quarantine = cloud.state_digest(), dict(cloud.quarantine.remaining)
    assert cloud.prescreen(uploads[:2]) == 2
    assert cloud.prescreen(uploads) == 1  # the first two are known already
    assert cloud.prescreen(uploads) == 0
    assert cloud.state_digest() == digest and cloud.quarantine.remaining == quarantine and cloud.version == 0


def test_results_on_other_weights_or_of_an_altered_upload_are_not_used(cycle):
    cloud, _, uploads = cycle
    assert cloud.prescreen(uploads) == 3
    # an upload that differs in one claim (its sample count) is another upload
    altered = uploads[0].model_copy(update={"update": uploads[0].update.model_copy(
        update={"num_samples": uploads[0].update.num_samples + 1})})
    assert cloud._known_statistics([altered, *uploads[1:]]).keys() == {uploads[1].channel, uploads[2].channel}
    # the cloud's weights changed (as a restore or an in-place update would): nothing is reused
    with torch.no_grad():
        next(cloud.model.backbone.parameters()).add_(1e-3)
    assert cloud._known_statistics(uploads) == {}
    outcome = cloud.merge(uploads)
    assert "screened_on_arrival" not in outcome.details


def test_a_malformed_or_quarantined_upload_is_left_to_the_merge(cycle):
    cloud, edges, uploads = cycle
    broken = uploads[0].model_copy(update={"update": uploads[0].update.model_copy(update={"payload": b"not weights"})})
    cloud.quarantine.remaining[uploads[1].channel] = 1
    assert cloud.prescreen([broken, uploads[1], uploads[2]]) == 1  # only the third
    outcome = cloud.merge([broken, uploads[1], uploads[2]])
    assert outcome.rejected[broken.channel].startswith("malformed upload")
    assert outcome.rejected[uploads[1].channel].startswith("quarantined")
    assert outcome.details.get("screened_on_arrival") == "1"


def test_screening_on_arrival_switched_off_does_nothing(tmp_path):
    cloud = CloudService(_config(tmp_path, screen_on_arrival=False))
    edge = EdgeService(cloud.cfg, 0)
    ship(cloud, edge)
    assert cloud.prescreen([_attributed(edge, edge.adapt())]) == 0 and cloud._arrivals is None


def test_a_failure_while_screening_on_arrival_is_logged_and_costs_only_the_early_start(cycle, monkeypatch, caplog):
    cloud, _, uploads = cycle

    def boom(*args, **kwargs):
        raise RuntimeError("worker lost")

    monkeypatch.setattr(type(cloud), "_prescreen", boom)
    assert cloud.prescreen(uploads) == 0
    assert "worker lost" in caplog.text
    monkeypatch.undo()
    assert cloud.merge(uploads).decision in ("accept", "partial", "reject")


def test_the_merge_neither_decodes_nor_checks_again_what_was_screened_on_arrival(cycle, monkeypatch):
    import eclm.pipelines._merge_admission as merge_admission
    import eclm.pipelines.upload_admission as upload_admission

    cloud, _, uploads = cycle
    assert cloud.prescreen(uploads[:2]) == 2
    decoded, checked = [], []
    admit_one, check_update = upload_admission.admit_one, merge_admission.check_update
    monkeypatch.setattr(upload_admission, "admit_one", lambda item, *a: decoded.append(item.channel) or admit_one(item, *a))
    monkeypatch.setattr(merge_admission, "check_update", lambda u, *a, **k: checked.append(u.device_id) or check_update(u, *a, **k))
    outcome = cloud.merge(uploads)
    assert decoded == [uploads[2].channel] and checked == [uploads[2].channel]
    assert outcome.details.get("screened_on_arrival") == "2" and set(outcome.screen) == {u.channel for u in uploads}
