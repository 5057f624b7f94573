"""Where a pipeline's capacity goes: bounds from the partition model, and a micro-batch's time per stage.

Two views, both pure functions of numbers the deployment already has:

* :func:`capacity_bounds` - what the nodes could deliver at best, from the profiled problem:
  the **sum of node capacities** (every node busy all the time on a perfectly divisible model,
  free links) and the tighter **chain bound** (the best *contiguous* partition of the measured
  blocks, still with free links and no per-stage overhead: what block granularity allows);
* :func:`stage_breakdown` - where the time of served micro-batches went, per pipeline hop:
  emulated compute and link, CPU, the wall time the stage spent, how long the input then waited
  for the emulated link, and the **hand-off gap**: wall time between the moment a stage's call
  could have begun (the previous stage had produced the input and this stage had finished its
  previous micro-batch) and the moment it did, i.e. Ray's per-call cost (serialisation, object
  transfer, scheduling, the actor's dispatch) plus waiting for a host core.

See docs/serving.md, "Where capacity goes".
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from eclm.serving.partition import dp_partition
from eclm.serving.partition_problem import PartitionProblem
from eclm.serving.requests import RequestRecord


def capacity_bounds(problem: PartitionProblem, micro_batch_size: int) -> dict[str, float]:
    """Upper bounds on the requests/s of any partition of ``problem``.

    Args:
        problem: The profiled problem (seconds per block per node for one micro-batch).
        micro_batch_size: Requests per micro-batch.

    Returns:
        ``sum_rps``: sum over nodes of the rate of the whole model on that node;
        ``chain_rps``: the best contiguous partition's rate with free links and no stage
        overhead (memory limits kept); ``granularity``: ``chain_rps / sum_rps``.
    """
    total = sum(micro_batch_size / math.fsum(row) for row in problem.block_latency)
    n = problem.n_nodes
    free = replace(problem, link_bandwidth=(math.inf,) * (n - 1), link_latency=(0.0,) * (n - 1),
                   stage_overhead=None)
    chain = micro_batch_size / dp_partition(free, "throughput").bottleneck
    return {"sum_rps": total, "chain_rps": chain, "granularity": chain / total}


def _batches(records: Sequence[RequestRecord]) -> list[tuple[float, float, list[dict]]]:
    """``(dispatched_at, finished_at, stage timings)`` per completed micro-batch, in dispatch order."""
    seen: dict[Any, tuple[float, float, list[dict]]] = {}
    for rec in records:
        if rec.ok and rec.stages:
            seen.setdefault(rec.stages[0].get("batch_id"), (rec.dispatched_at, rec.finished_at, rec.stages))
    return sorted(seen.values(), key=lambda b: b[0])


def stage_breakdown(records: Sequence[RequestRecord]) -> list[dict[str, float]]:
    """Median time of a micro-batch per pipeline hop, in milliseconds (see the module docstring).

    Micro-batches must share one route (one plan); records of other routes are ignored.

    Args:
        records: Completed requests of one saturated run.

    Returns:
        One dict per hop in route order: ``node``, ``blocks`` (``"start-stop"``), medians of
        ``compute_ms``, ``codec_ms`` (encode + decode, part of compute), ``link_ms``,
        ``cpu_ms``, ``wall_ms`` (in the stage, pacing included), ``wait_ms`` (input still on
        the emulated link), ``handoff_ms`` (see the module docstring), ``busy`` (wall time in
        the stage / span of the run), ``first_block_ms`` and ``blocks_ms`` (node seconds of the
        stage's first block and of all its blocks, so a cost paid on entering a stage shows
        apart from the blocks' steady cost; NaN when the timings carry no per-block seconds),
        and on the last hop ``return_ms`` (result to the coordinator). Empty if nothing
        completed.
    """
    batches = _batches(records)
    if not batches:
        return []
    route = [(s["node"], s["start"], s["stop"]) for s in batches[0][2]]
    batches = [b for b in batches if [(s["node"], s["start"], s["stop"]) for s in b[2]] == route]
    span = max(b[1] for b in batches) - min(b[0] for b in batches)
    out = []
    for k, (node, start, stop) in enumerate(route):
        gaps = []
        for j, (dispatched, _, stages) in enumerate(batches):
            ready = stages[k - 1]["finished_at"] if k else dispatched
            free = batches[j - 1][2][k]["finished_at"] if j else ready
            gaps.append(stages[k]["started_at"] - max(ready, free))

        def med(key: str, k: int = k) -> float:
            return 1e3 * statistics.median(b[2][k].get(key, 0.0) for b in batches)

        per_block = [b[2][k]["block_s"] for b in batches if b[2][k].get("block_s")]
        row = {"node": node, "blocks": f"{start}-{stop}", "compute_ms": med("compute_s"), "codec_ms": med("codec_s"),
               "link_ms": med("link_s"), "cpu_ms": med("cpu_s"), "wall_ms": med("wall_s"), "wait_ms": med("wait_s"),
               "handoff_ms": 1e3 * statistics.median(gaps),
               "first_block_ms": 1e3 * statistics.median(v[0] for v in per_block) if per_block else math.nan,
               "blocks_ms": 1e3 * statistics.median(math.fsum(v) for v in per_block) if per_block else math.nan,
               "busy": sum(b[2][k]["wall_s"] for b in batches) / span if span > 0 else math.nan}
        out.append(row)
    out[-1]["return_ms"] = 1e3 * statistics.median(b[1] - b[2][-1]["finished_at"] for b in batches)
    return out
