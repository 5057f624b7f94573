"""Actors dying mid-cycle on a real local Ray: the cycle completes and the campaign loses nothing.

A test wraps one endpoint so that the actor behind it is killed right after a call was submitted
to it (the call is in flight when its process dies), which is what a crash mid-adapt or mid-merge
looks like to the coordinator. One platform serves both tests (the ``cloud`` resource has one unit), the edge test first.
"""

from __future__ import annotations

import pytest
from conftest import tiny_config

from eclm.platform import Platform

pytestmark = pytest.mark.integration


class KillAfterSubmit:
    """An endpoint whose actor is killed right after ``method`` was submitted to it."""

    def __init__(self, endpoint, method: str) -> None:
        self.endpoint, self.method, self.killed = endpoint, method, False

    def __getattr__(self, name: str):
        call = getattr(self.endpoint, name)
        if name != self.method or self.killed:
            return call

        def submit_then_kill(*args, **kwargs):
            import ray

            pending = call(*args, **kwargs)
            ray.kill(self.endpoint.actor, no_restart=True)
            self.killed = True
            return pending

        return submit_then_kill


@pytest.fixture(scope="module")
def platform(local_ray, tmp_path_factory):
    # Every merge is accepted (tolerance 1.0, no cap on an observed drop): the versions tell whether
    # an accepted round was lost.
    cfg = tiny_config(tmp_path_factory.mktemp("recovery"), **{"merge.tolerance": 1.0, "merge.device_tolerance": 1.0,
                                   "merge.max_drop": None, "merge.device_max_drop": None, "adaptation.epochs": 1,
                                   "tracking": {"enabled": False}})
    p = Platform(cfg).start()
    try:
        p.pretrain()
        yield p
    finally:
        p.shutdown()


def test_an_edge_killed_mid_adapt_misses_one_cycle_then_returns_with_its_adapted_weights(platform):
    p = platform
    first = p.run_cycle()
    assert first.merge.changed and not first.failures
    held = p.state.held["d1"]
    p.fleet.devices["d1"] = KillAfterSubmit(p.fleet.devices["d1"], "adapt")

    second = p.run_cycle()

    assert set(second.failures) == {"d1"} and second.failures["d1"].startswith("adapt: dead")
    assert set(second.merge.accepted) == {"d0", "d2"} and second.merge.changed
    third = p.run_cycle()  # d1 is restarted from its store before its first call
    assert not third.failures and "d1" in third.merge.accepted
    # It kept the sub-model it adapted in the first cycle (same spec, from version 0) and received
    # only the cloud's change since then: a delta, smaller than its first full delivery.
    assert third.specs["d1"] == held.spec
    assert third.bytes_down["d1"] < first.bytes_down["d1"]
    assert p.state.held["d1"].version == third.merge.version - 1


def test_a_cloud_killed_mid_merge_is_recreated_from_the_store_and_no_accepted_round_is_lost(platform):
    p = platform
    first = p.run_cycle()
    assert first.merge.changed and not first.failures
    old, version = p.fleet.cloud.actor, first.merge.version
    p.fleet.cloud = KillAfterSubmit(p.fleet.cloud, "merge")

    second = p.run_cycle()

    assert not second.failures and second.merge.changed
    assert p.fleet.cloud.actor is not old  # a new cloud actor, restored from the last commit
    assert second.merge.version == p.state.version == version + 1  # the version before survived the crash
    state, snapshot = p.store.load_latest()
    assert state.version == snapshot.version == version + 1
    third = p.run_cycle()
    assert third.merge.version == version + 2 and not third.failures
