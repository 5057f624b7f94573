"""RequestLedger: bounded in-flight, micro-batches, retries at the front of the queue, none lost."""

import pytest
import torch

from eclm.serving import RequestLedger

SHAPE = (2, 3, 3)


def ledger(max_in_flight=4, micro=2, retries=1):
    return RequestLedger(max_in_flight, micro, retries, SHAPE)


def submit(led, n):
    return [led.submit(torch.full(SHAPE, float(i)), now=float(i)) for i in range(n)]


@pytest.mark.parametrize("max_in_flight,micro,n,expected", [
    (4, 2, 7, [2, 2]),        # two full micro-batches fill the bound
    (8, 3, 7, [3, 3, 1]),     # the tail goes as a partial micro-batch
    (5, 2, 9, [2, 2]),        # a third batch of 2 would exceed 5 in flight
    (1, 1, 3, [1]),
])
def test_batches_respect_micro_batch_size_and_in_flight_bound(max_in_flight, micro, n, expected):
    led = ledger(max_in_flight, micro)
    submit(led, n)
    sizes = []
    while (b := led.take_batch(now=10.0)) is not None:
        sizes.append(len(b.request_ids))
    assert sizes == expected
    assert led.in_flight_requests == sum(expected) <= max_in_flight
    assert led.pending == n - sum(expected)


def test_inputs_stack_in_request_order_and_outputs_map_back():
    led = ledger()
    ids = submit(led, 2)
    batch = led.take_batch(now=1.0)
    x = led.inputs(batch)
    assert x.shape == (2, *SHAPE) and torch.equal(x[1], torch.full(SHAPE, 1.0))
    done = led.complete(batch.batch_id, x.sum(dim=(1, 2, 3)).unsqueeze(1), [{"node": 0}], now=2.0)
    assert done == ids
    assert [led.records[i].output.item() for i in ids] == [0.0, 18.0]
    assert all(led.records[i].ok and led.records[i].batch_size == 2 for i in ids)


def test_failed_batch_is_retried_first_and_no_request_is_lost():
    led = ledger(max_in_flight=4, micro=2, retries=2)
    ids = submit(led, 6)
    first = led.take_batch(now=1.0)
    requeued, failed = led.fail(first.batch_id, "actor died", now=2.0)
    assert requeued == list(first.request_ids) and failed == []
    again = led.take_batch(now=3.0)
    assert again.request_ids == first.request_ids  # front of the queue, original order
    assert again.batch_id != first.batch_id
    while led.pending or led.in_flight_requests:
        b = led.take_batch(now=4.0)
        if b is None:
            b = next(iter(led.in_flight.values()))
        led.complete(b.batch_id, torch.zeros(len(b.request_ids), 1), [], now=5.0)
    assert led.all_done(ids) and all(led.records[i].ok for i in ids)
    assert [led.records[i].attempts for i in ids] == [2, 2, 1, 1, 1, 1]
    assert led.retries == 2


@pytest.mark.parametrize("retries", [0, 1, 3])
def test_requests_fail_for_good_after_max_retries(retries):
    led = ledger(max_in_flight=2, micro=1, retries=retries)
    (rid,) = submit(led, 1)
    for attempt in range(retries + 1):
        batch = led.take_batch(now=float(attempt))
        assert batch is not None
        requeued, failed = led.fail(batch.batch_id, "boom", now=float(attempt))
    assert failed == [rid] and requeued == []
    rec = led.records[rid]
    assert rec.done and not rec.ok and "boom" in rec.error and rec.attempts == retries + 1
    assert led.take_batch(now=9.0) is None


def test_timings_report_wall_and_emulated_parts():
    led = ledger()
    (rid,) = submit(led, 1)
    b = led.take_batch(now=2.5)
    stages = [{"node": 0, "start": 0, "stop": 3, "compute_s": 0.01, "link_s": 0.002, "wall_s": 0.02},
              {"node": 1, "start": 3, "stop": 5, "compute_s": 0.03, "link_s": 0.0, "wall_s": 0.04}]
    led.complete(b.batch_id, torch.zeros(1, 4), stages, now=3.0)
    t = led.records[rid].timings()
    assert t["latency_s"] == pytest.approx(3.0) and t["queue_s"] == pytest.approx(2.5)
    assert t["service_s"] == pytest.approx(0.5) and t["emulated_s"] == pytest.approx(0.042)
    assert [s["node"] for s in t["stages"]] == [0, 1]


@pytest.mark.parametrize("x", [torch.zeros(2, 2, 3, 3), torch.zeros(3, 3), torch.zeros(2, 4, 4)])
def test_wrong_request_shapes_raise(x):
    with pytest.raises(ValueError, match="shape"):
        ledger().submit(x, now=0.0)


def test_a_leading_batch_of_one_is_accepted_and_non_tensors_rejected():
    led = ledger()
    led.submit(torch.zeros(1, *SHAPE), now=0.0)
    with pytest.raises(TypeError):
        led.submit([1, 2], now=0.0)


def test_output_rows_must_match_the_batch():
    led = ledger()
    submit(led, 2)
    b = led.take_batch(now=0.0)
    with pytest.raises(ValueError, match="outputs"):
        led.complete(b.batch_id, torch.zeros(3, 1), [], now=1.0)
    assert b.batch_id in led.in_flight  # still in flight: nothing recorded


@pytest.mark.parametrize("kwargs", [dict(max_in_flight=0), dict(micro_batch_size=0),
                                    dict(max_in_flight=2, micro_batch_size=3), dict(max_retries=-1)])
def test_invalid_limits_raise(kwargs):
    args = dict(max_in_flight=4, micro_batch_size=2, max_retries=1) | kwargs
    with pytest.raises(ValueError):
        RequestLedger(**args)
