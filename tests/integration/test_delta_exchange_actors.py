"""The delta exchange through real Ray actors (own module: the campaign module's platform holds the
single ``cloud`` resource unit for its whole life, so a second platform could not place its cloud)."""

from __future__ import annotations

import pytest
from conftest import tiny_config

from eclm.platform import Platform

pytestmark = pytest.mark.integration

DEVICES = ["d0", "d1", "d2"]


def test_accepted_merges_reach_devices_as_deltas_through_the_actors(local_ray, tmp_path):
    # Tolerances of 1.0 and no screen: every merge is accepted, so every cycle after the first ships
    # the cloud's change since the version a device holds (the delta exchange) instead of its whole
    # sub-model. (The defences are tested in tests/unit; here they would make acceptance uncertain.)
    # Module changes below 30% of a module's weights wait (most of them, so lagging modules occur).
    cfg = tiny_config(tmp_path, **{"merge.tolerance": 1.0, "merge.device_tolerance": 1.0,
                                   "merge.acceptance": "threshold", "merge.screen": {"enabled": False},
                                   "adaptation.epochs": 1, "adaptation.download_min_change": 0.3,
                                   "tracking": {"enabled": False}})
    p = Platform(cfg).start()
    try:
        p.pretrain()
        first, second = p.run(steps=2)
        assert first.merge.decision == "accept" and second.merge.decision == "accept"
        assert not first.failures and not second.failures
        selector, _, _ = p.coordinator.selector()
        kept = [n for n in DEVICES if first.specs[n] == second.specs[n]]  # same modules: a delta can be sent
        assert {"d0", "d2"} <= set(kept)  # unconstrained devices always get the full model
        for n in kept:
            # A delta leaves BatchNorm statistics out (devices keep their own), so it is strictly
            # smaller than the full sub-model of the first cycle; the selector went in the first
            # cycle only (devices keep it).
            assert 0 < second.bytes_down[n] < first.bytes_down[n] - selector
        version = p.state.version
        summaries, failures = p.fleet.gather({n: p.fleet.devices[n].summary(None) for n in DEVICES})
        assert not failures
        assert all(s.held.version == version - 1 for s in summaries.values())  # installed before the merge
        # what a download left behind travels back from the devices and is in the coordinator's state
        assert all(s.held.lagging == p.state.held[n].lagging for n, s in summaries.items())
        assert any(summaries[n].held.lagging for n in kept)
        # d1's resources grow: it is derived a wider sub-model and gets a respec payload (the change
        # of the modules it keeps plus the new ones), smaller than a whole first delivery.
        p.set_device_resources("d1", params_fraction=1.0)
        third = p.run_cycle(devices=["d1"])
        assert not third.failures and third.specs["d1"] != second.specs["d1"]
        assert third.specs["d1"] == first.specs["d0"]  # the full model, as the unconstrained devices hold
        assert 0 < third.bytes_down["d1"] < first.bytes_down["d0"] - selector
        summaries, failures = p.fleet.gather({"d1": p.fleet.devices["d1"].summary(None)})
        assert not failures and summaries["d1"].held.spec == third.specs["d1"]
    finally:
        p.shutdown()
