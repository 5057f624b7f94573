"""What a serving session records: plan costs, the plan record, and the flat metrics for MLflow.

Plain dict builders, so the coordinator's logging is one call per artifact and the keys are tested
without Ray or MLflow. Keys live under ``serving/<session>/``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from eclm.serving.config import ServingConfig
from eclm.serving.partition_problem import PartitionPlan
from eclm.serving.planning import NodeProfile


def plan_costs(plan: PartitionPlan, micro_batch_size: int) -> dict[str, Any]:
    """Profile-predicted costs of ``plan``; its seconds are per micro-batch of ``micro_batch_size``."""
    return {"bottleneck_s": plan.bottleneck, "latency_s": plan.latency,
            "throughput_rps": micro_batch_size * plan.throughput, "fits_memory": plan.fits_memory}


def plan_record(session: str, model: str, model_meta: Mapping[str, Any], config: ServingConfig, n_blocks: int,
                plan: PartitionPlan, profiles: Sequence[NodeProfile], replicas: Sequence[int]) -> dict[str, Any]:
    """The ``plan.json`` of a session: the cut, predicted stage costs, the node profiles, the config."""
    return {
        "session": session, "model": model, "model_meta": dict(model_meta),
        "config": config.model_dump(mode="json"), "n_blocks": n_blocks,
        "boundaries": list(plan.boundaries), "method": plan.method, "codec": plan.codec,
        "stages": [{"node": s.node, "blocks": [s.start, s.stop], "compute_s": s.compute_time,
                    "transfer_s": s.transfer_time, "memory_bytes": s.memory_bytes} for s in plan.stages],
        "predicted": plan_costs(plan, config.micro_batch_size), "replicas": list(replicas),
        "profiles": [{"node": p.node, "cpu_share": p.cpu_share, "block_seconds": list(p.block_seconds),
                      "stage_overhead_s": p.stage_overhead} for p in profiles],
    }


def session_metrics(session: str, stats: Mapping[str, Any]) -> dict[str, float]:
    """Flat MLflow metrics from :func:`~eclm.serving.session_stats.summarize` output plus the
    deployment's ``repartitions`` / ``replacements`` counts."""
    prefix = f"serving/{session}"
    metrics = {f"{prefix}/{key}": float(stats.get(key, 0))
               for key in ("requests", "failed", "retried", "repartitions", "replacements")}
    if not stats.get("requests"):
        return metrics
    for key in ("throughput_rps", "emulated_throughput_rps", "schedule_us_per_request"):
        metrics[f"{prefix}/{key}"] = float(stats[key])
    for key in ("latency_ms", "service_ms", "emulated_latency_ms", "emulated_queued_ms"):
        metrics.update({f"{prefix}/{key}_{q}": float(v) for q, v in stats[key].items()})
    for node, load in stats["stage_load"].items():
        name = node if node.startswith("link") else f"node{node}"
        metrics[f"{prefix}/{name}_busy_fraction"] = float(load["busy_fraction"])
    return metrics
