"""Session statistics: emulated replay of micro-batches, percentiles, throughput windows, summaries."""

import math

import pytest
import torch

from eclm.serving import (
    BatchTrace,
    RequestLedger,
    percentiles,
    replay_emulated,
    steady_rate,
    summarize,
    throughput_timeline,
)


def pipeline_traces(n, stage_seconds, size=1):
    return [BatchTrace(size, tuple(enumerate(stage_seconds))) for _ in range(n)]


@pytest.mark.parametrize("stages", [(0.01,), (0.01, 0.03, 0.02), (0.05, 0.01)])
def test_one_at_a_time_latency_is_the_sum_of_hops(stages):
    result = replay_emulated(pipeline_traces(5, stages), max_in_flight=1)
    assert all(lat == pytest.approx(sum(stages)) for lat in result.batch_latency_s)
    assert result.makespan_s == pytest.approx(5 * sum(stages))


@pytest.mark.parametrize("stages,in_flight", [((0.01, 0.03, 0.02), 3), ((0.02, 0.02), 2), ((0.04, 0.01, 0.01), 8)])
def test_a_full_pipeline_runs_at_the_bottleneck_rate(stages, in_flight):
    n = 200
    result = replay_emulated(pipeline_traces(n, stages), max_in_flight=in_flight)
    # Pipeline fill plus n times the slowest stage.
    assert result.makespan_s == pytest.approx(sum(stages) + (n - 1) * max(stages))
    assert result.throughput_rps == pytest.approx(n / result.makespan_s)
    # Counted from the first completion, the fill drops out: exactly the bottleneck rate.
    assert result.steady_throughput_rps == pytest.approx(1 / max(stages))


@pytest.mark.parametrize("finish,sizes,expected", [
    ([1.0, 2.0, 3.0], [4, 4, 4], 4.0),
    ([3.0, 1.0, 2.0], [2, 8, 2], 2.0),   # order does not matter; the first batch only starts the clock
    ([1.0], [5], math.nan),
    ([2.0, 2.0], [1, 1], math.nan),
])
def test_steady_rate(finish, sizes, expected):
    got = steady_rate(finish, sizes)
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


def test_in_flight_bound_limits_overlap():
    stages = (0.01, 0.01, 0.01, 0.01)
    free = replay_emulated(pipeline_traces(50, stages), max_in_flight=4).throughput_rps
    bound = replay_emulated(pipeline_traces(50, stages), max_in_flight=2).throughput_rps
    assert bound < free
    assert bound == pytest.approx(2 / sum(stages), rel=0.1)  # Little's law: 2 in flight / latency


def test_replicas_on_separate_nodes_add_up():
    traces = [BatchTrace(1, ((i % 2, 0.02),)) for i in range(100)]
    result = replay_emulated(traces, max_in_flight=2)
    assert result.throughput_rps == pytest.approx(100.0, rel=0.02)  # two nodes at 50 req/s each


def test_replay_rejects_batches_above_the_bound_and_handles_empty():
    with pytest.raises(ValueError, match="max_in_flight"):
        replay_emulated([BatchTrace(4, ((0, 0.1),))], max_in_flight=2)
    assert math.isnan(replay_emulated([], max_in_flight=2).throughput_rps)


def test_percentiles_and_timeline():
    p = percentiles(list(range(101)))
    assert (p["p50"], p["p95"], p["p99"]) == (50.0, 95.0, 99.0)
    assert math.isnan(percentiles([])["p50"])
    times, rps = throughput_timeline([0.1, 0.2, 0.9, 1.1, 1.9, 2.4], start=0.0, window_s=1.0)
    assert times == [0.5, 1.5, 2.5] and rps == [3.0, 2.0, 1.0]
    with pytest.raises(ValueError):
        throughput_timeline([1.0], 0.0, 0.0)


def test_summarize_counts_requests_retries_and_node_load():
    led = RequestLedger(4, 2, 1, (1,))
    ids = [led.submit(torch.zeros(1), now=0.0) for _ in range(4)]
    b1 = led.take_batch(now=0.0)
    led.fail(b1.batch_id, "died", now=0.5)
    stage = lambda bid: [  # noqa: E731
        {"batch_id": bid, "node": 0, "start": 0, "stop": 2, "compute_s": 0.1, "link_s": 0.0,
         "wall_s": 0.1},
        {"batch_id": bid, "node": 1, "start": 2, "stop": 4, "compute_s": 0.3, "link_s": 0.0,
         "wall_s": 0.3}]
    for now in (1.0, 2.0):
        b = led.take_batch(now=now - 1.0)
        led.complete(b.batch_id, torch.zeros(2, 3), stage(b.batch_id), now=now)
    s = summarize([led.records[i] for i in ids], max_in_flight=4)
    assert s["requests"] == 4 and s["failed"] == 0 and s["retried"] == 2
    assert s["throughput_rps"] == pytest.approx(4 / 2.0)
    assert s["steady_throughput_rps"] == pytest.approx(2 / 1.0)  # batch 2 finished 1 s after batch 1
    assert s["emulated_steady_throughput_rps"] == pytest.approx(2 / 0.3)
    assert s["emulated_latency_ms"]["p50"] == pytest.approx(400.0)
    assert s["stage_load"]["1"]["busy_fraction"] == pytest.approx(0.6 / 2.0)
    assert s["stage_load"]["0"]["micro_batches"] == 2
    # Two micro-batches through (0.1, 0.3) with both in flight: 0.1 + 0.3 + 0.3.
    assert s["emulated_throughput_rps"] == pytest.approx(4 / 0.7)
    assert s["emulated_queued_ms"]["p50"] == pytest.approx(1e3 * (0.4 + 0.7) / 2)  # batch 2 waits for node 1


def test_throughput_figure_draws_series_and_event_markers():
    from eclm.serving.plots import throughput_over_time

    fig = throughput_over_time({"dp": ([0.5, 1.5], [10.0, 4.0]), "static": ([0.5, 1.5], [10.0, 3.0])},
                               {"dp": [(1.0, "repartition")], "static": [(0.9, "cpu_share")]})
    ax = fig.axes[0]
    assert len(ax.lines) == 4  # two series, two markers
    assert {t.get_text() for t in ax.get_legend().get_texts()} >= {"dp", "static"}
    with pytest.raises(ValueError):
        throughput_over_time({})
    with pytest.raises(ValueError, match="times"):
        throughput_over_time({"a": ([0.0, 1.0], [1.0])})
