"""The merge's per-update work on worker threads: the same decisions and the same cloud model as
on one thread, each thread with its own sub-models, torch's own thread count restored."""

from __future__ import annotations

import threading

import pytest
import torch

from eclm.pipelines.merge_workers import PerThread, available_cores, parallel_map, resolve_workers
from tests.unit.test_pipelines_merge_extractions import campaign

torch.set_num_threads(1)


def test_parallel_map_keeps_input_order_and_restores_torch_threads():
    seen_threads: list[int] = []

    def work(i: int) -> int:
        seen_threads.append(torch.get_num_threads())
        return i * i

    torch.set_num_threads(2)  # a host's own setting: one torch thread per worker meanwhile, then back
    try:
        assert parallel_map(work, range(20), workers=3) == [i * i for i in range(20)]
        assert set(seen_threads) == {1} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert parallel_map(work, [], workers=3) == []


def test_parallel_map_raises_the_first_failure_in_input_order_after_the_rest_ran():
    done: list[int] = []

    def work(i: int) -> int:
        if i in (3, 7):
            raise ValueError(f"item {i}")
        done.append(i)
        return i

    with pytest.raises(ValueError, match="item 3"):
        parallel_map(work, range(10), workers=2)
    assert sorted(done) == [0, 1, 2, 4, 5, 6, 8, 9]


def test_per_thread_objects_are_one_per_thread_and_kept():
    per = PerThread(object)
    mine = per.get()
    assert per.get() is mine
    barrier = threading.Barrier(2)

    def work(_: int) -> int:
        barrier.wait(timeout=10)  # both workers alive at once: two distinct threads
        return id(per.get())

    ids = parallel_map(work, range(2), workers=2)
    assert len(set(ids)) == 2 and id(mine) not in ids


def test_worker_count_defaults_to_the_cores_available():
    assert resolve_workers(3) == 3 and resolve_workers(None) == available_cores() >= 1


def test_a_merge_on_two_workers_decides_and_merges_exactly_as_on_one(tmp_path):
    one, one_state, _ = campaign(tmp_path / "one", workers=1)
    two, two_state, _ = campaign(tmp_path / "two", workers=2)
    assert [o.model_dump(exclude={"seconds"}) for o in one] == [o.model_dump(exclude={"seconds"}) for o in two]
    assert any(o.decision != "reject" for o in one)  # the merge did something to agree on
    assert one_state.keys() == two_state.keys() and all(torch.equal(one_state[k], two_state[k]) for k in one_state)
