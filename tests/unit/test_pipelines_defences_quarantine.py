"""Quarantine of devices caught training on wrong labels: counted in uploads, kept in the checkpoint."""

from __future__ import annotations

import pytest

from eclm.modules import ModuleUpdate, SubModelSpec
from eclm.pipelines.defences.quarantine import Quarantine

SPEC = SubModelSpec(model_id="m", groups=((0,),))


def _u(name: str) -> ModuleUpdate:
    return ModuleUpdate(name, SPEC, {}, [[1.0]], 10, [0])


BEHAVIOUR = "screen: behaviour: accuracy on its own classes 0.800 -> 0.100 on 40 proxy samples"


def test_a_behaviour_rejection_refuses_the_next_uploads_and_then_lets_the_device_back():
    q = Quarantine(uploads=2)
    loss = "screen: own-class loss: among its own classes 0.400 -> 0.600 nats, higher on 30 of 33 proxy samples"
    assert q.record({"d0": BEHAVIOUR, "d1": "screen: norm 10 x the round's typical update", "d2": "harmful: x",
                     "d3": loss}) == ["d0"]  # the loss check sees later uploads itself: no quarantine
    for left in (1, 0):
        kept, refused = q.admit([_u("d0"), _u("d1")])
        assert [u.device_id for u in kept] == ["d1"] and f"{left} more upload(s) refused" in refused["d0"]
    kept, refused = q.admit([_u("d0")])
    assert [u.device_id for u in kept] == ["d0"] and not refused and q.remaining == {}


def test_a_device_that_is_away_keeps_its_count_and_a_new_catch_restarts_it():
    q = Quarantine(uploads=3)
    q.record({"d0": BEHAVIOUR})
    q.admit([_u("d1")])  # d0 away this round
    assert q.remaining == {"d0": 3}
    q.admit([_u("d0")])
    q.record({"d0": "screen: direction: cosine -0.2; behaviour: accuracy ..."})
    assert q.remaining == {"d0": 3}


def test_quarantine_off_records_nothing():
    q = Quarantine(uploads=0)
    assert q.record({"d0": BEHAVIOUR}) == [] and q.admit([_u("d0")])[0]


def test_a_caught_or_refused_device_is_marked_for_fresh_weights_once_per_upload():
    q = Quarantine(uploads=1)
    loss = "screen: norm 5 x the round's typical update; own-class loss: among its own classes 0.4 -> 0.6 nats"
    assert q.record({"d0": BEHAVIOUR, "d1": "screen: norm 10 x the round's typical update", "d2": loss,
                     "d3": "harmful: own-class loss: named so by nothing the screen found"}) == ["d0"]
    assert q.refresh == {"d0", "d2"}  # the loss check refreshes without refusing the next uploads
    assert q.take_refresh("d0") and not q.take_refresh("d0") and not q.take_refresh("d1")
    q.admit([_u("d0")])  # refused: its weights still keep the last round's training
    assert q.take_refresh("d0") and not q.take_refresh("d0")
    q.admit([_u("d0")])  # the quarantine is over: an admitted upload marks nothing
    assert not q.take_refresh("d0")
    trust = "screen: trust: cosine -0.390 with the cloud's reference update on the classifier rows of its classes"
    assert q.record({"d4": trust, "d5": "screen: direction: cosine -0.2 with the median of the other devices"}) == []
    assert q.take_refresh("d4") and not q.take_refresh("d5")  # trust refreshes (no quarantine); direction does neither
    assert q.remaining == {}
    off = Quarantine(uploads=2, fresh=False)
    off.record({"d0": BEHAVIOUR})
    off.admit([_u("d0")])
    assert off.remaining == {"d0": 1} and not off.take_refresh("d0")
    only_fresh = Quarantine(uploads=0)  # no refused uploads, fresh weights still
    assert only_fresh.record({"d0": BEHAVIOUR}) == [] and only_fresh.take_refresh("d0")


def test_the_checkpoint_form_round_trips_and_malformed_forms_are_refused():
    q = Quarantine(uploads=2)
    q.record({"d0": BEHAVIOUR})
    r = Quarantine(uploads=2)
    r.load(q.to_meta())
    assert r.remaining == {"d0": 2} and r.refresh == {"d0"}
    r.load({"d1": 1})  # the form of checkpoints written before fresh weights
    assert r.remaining == {"d1": 1} and r.refresh == set()
    r.load(None)
    assert r.remaining == {} and r.refresh == set()
    for bad in ([1, 2], {"d0": -1}, {"d0": True}, {3: 1}, {"d0": 1.5},
                {"remaining": {"d0": 1}, "refresh": "d0"}, {"remaining": {"d0": 1}, "refresh": [3]}):
        with pytest.raises(ValueError):
            Quarantine().load(bad)


def test_a_restored_cloud_keeps_the_quarantine(tmp_path):
    import torch

    from eclm.config import PlatformConfig
    from eclm.pipelines.cloud_service import CloudService

    torch.set_num_threads(1)
    cfg = PlatformConfig.from_dict({
        "name": "q", "workdir": str(tmp_path),
        "data": {"source": "digits", "image_size": 16, "num_devices": 2, "classes_per_device": 3,
                 "samples_per_device": [20, 30]},
        "backbone": {"name": "resnet18", "kwargs": {"channels": [8, 8, 16, 16]}, "modules_per_layer": 2},
        "devices": [{"name": "d0"}, {"name": "d1"}], "tracking": {"enabled": False},
    })
    cloud = CloudService(cfg)
    cloud.quarantine.record({"d1": BEHAVIOUR})
    again = CloudService(cfg)
    again.restore(cloud.snapshot())
    assert again.quarantine.remaining == {"d1": 2} and again.quarantine.uploads == 2
    assert again.quarantine.refresh == {"d1"}
