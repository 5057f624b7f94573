"""Benchmark jobs in worker processes: results come back in job order, longest settings start first."""

from __future__ import annotations

import operator

import pytest

from benchmarks.parallel import run_jobs
from benchmarks.suites import _robustness_runs as runs
from benchmarks.suites._robustness_runs import RobustnessBenchConfig


@pytest.mark.parametrize("workers", [0, 2])
def test_results_come_back_in_job_order(workers):
    jobs = [(i, 10) for i in range(5)]
    assert run_jobs(operator.add, jobs, workers) == [10, 11, 12, 13, 14]


def test_a_failing_job_raises_in_the_caller():
    with pytest.raises(ZeroDivisionError):
        run_jobs(operator.truediv, [(1, 1), (1, 0)], 2)


def test_robustness_settings_start_largest_first_and_return_by_share_then_seed(monkeypatch):
    submitted = []

    def fake(fn, jobs, workers):
        submitted.extend((share, seed) for _, share, seed, _ in jobs)
        assert fn is runs._setting_job and workers == 2
        return [[{"share": share, "seed": seed}] for _, share, seed, _ in jobs]

    monkeypatch.setattr(runs, "run_jobs", fake)
    config = RobustnessBenchConfig(seeds=2, shares=[(1, 5), (3, 20)], workers=2)
    records = runs.run_settings(config)
    assert submitted[:2] == [((3, 20), 0), ((3, 20), 1)]
    assert [(r["share"], r["seed"]) for r in records] == [((1, 5), 0), ((1, 5), 1), ((3, 20), 0), ((3, 20), 1)]


def test_full_mode_runs_settings_in_two_workers_and_quick_in_this_process():
    assert RobustnessBenchConfig.for_mode("full").workers == 2
    assert RobustnessBenchConfig.for_mode("quick").workers == 0
