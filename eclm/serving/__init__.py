"""Adaptive partitioned inference across edge nodes (AMP4EC done honestly), Ray-free core.

Monitor node resources, partition a chain of blocks over ordered nodes (optimal DP or AMP4EC's
proportional baseline), decide when to re-partition, schedule requests, emulate heterogeneous
nodes and links, and cut/profile/run ``nn.Sequential`` stages. The stage actor's core
(:class:`StageWorker`: rebuild a stage from architecture + safetensors weights, profile, paced
forward) and the coordinator's bookkeeping (:class:`RequestLedger`, :func:`summarize`) live here
too; the Ray shells are ``eclm.actors.serving`` and ``eclm.runtime.serving``.


Names are imported on first use (PEP 562), so importing one light submodule (for example
a config) does not pull in torch through this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eclm._lazy import lazy_exports

if TYPE_CHECKING:
    from eclm.serving.adaptation import RepartitionPolicy
    from eclm.serving.config import CODECS, WIRE_RATIO, ServingConfig
    from eclm.serving.emulation import DutyCycle, LinkDelay
    from eclm.serving.model_source import ModelSource, build_chain, build_model, stage_module
    from eclm.serving.monitor import NodeResources, ResourceEvent, ResourceMonitor
    from eclm.serving.pacing import NodePacer
    from eclm.serving.partition import (
        OBJECTIVES,
        Objective,
        brute_force_partition,
        dp_partition,
        monolithic_plan,
        proportional_partition,
    )
    from eclm.serving.partition_problem import PartitionPlan, PartitionProblem, PlanStage, evaluate_plan
    from eclm.serving.placement import CPU_NEED, busy_fraction, replica_states
    from eclm.serving.planning import (
        NodeProfile,
        SlowdownTracker,
        StageRoute,
        build_problem,
        make_plan,
        replan,
        routes_for,
        strongest_node,
    )
    from eclm.serving.replan import RepartitionDecision, decide_repartition
    from eclm.serving.requests import MicroBatch, RequestLedger, RequestRecord
    from eclm.serving.scheduler import (
        SCHEDULERS,
        Amp4ecScheduler,
        Amp4ecScore,
        LeastLoadedScheduler,
        NodeState,
        NoEligibleNodeError,
        RequestScheduler,
        RoundRobinScheduler,
        create_scheduler,
    )
    from eclm.serving.session_log import plan_costs, plan_record, session_metrics
    from eclm.serving.session_stats import (
        BatchTrace,
        ReplayResult,
        batch_traces,
        percentiles,
        replay_emulated,
        steady_rate,
        summarize,
        throughput_timeline,
    )
    from eclm.serving.stages import (
        BlockProfile,
        as_blocks,
        block_memory_bytes,
        measure_block_latencies,
        payload_nbytes,
        run_pipeline_inprocess,
        split_into_stages,
    )
    from eclm.serving.wire import StageMessage, decode, encode
    from eclm.serving.worker import NodeSettings, StageWorker

_EXPORTS: dict[str, tuple[str, str]] = {
    "RepartitionPolicy": ("eclm.serving.adaptation", "RepartitionPolicy"),
    "ServingConfig": ("eclm.serving.config", "ServingConfig"),
    "DutyCycle": ("eclm.serving.emulation", "DutyCycle"),
    "LinkDelay": ("eclm.serving.emulation", "LinkDelay"),
    "ModelSource": ("eclm.serving.model_source", "ModelSource"),
    "build_chain": ("eclm.serving.model_source", "build_chain"),
    "build_model": ("eclm.serving.model_source", "build_model"),
    "stage_module": ("eclm.serving.model_source", "stage_module"),
    "NodeResources": ("eclm.serving.monitor", "NodeResources"),
    "ResourceEvent": ("eclm.serving.monitor", "ResourceEvent"),
    "ResourceMonitor": ("eclm.serving.monitor", "ResourceMonitor"),
    "NodePacer": ("eclm.serving.pacing", "NodePacer"),
    "OBJECTIVES": ("eclm.serving.partition", "OBJECTIVES"),
    "Objective": ("eclm.serving.partition", "Objective"),
    "brute_force_partition": ("eclm.serving.partition", "brute_force_partition"),
    "dp_partition": ("eclm.serving.partition", "dp_partition"),
    "monolithic_plan": ("eclm.serving.partition", "monolithic_plan"),
    "proportional_partition": ("eclm.serving.partition", "proportional_partition"),
    "PartitionPlan": ("eclm.serving.partition_problem", "PartitionPlan"),
    "PartitionProblem": ("eclm.serving.partition_problem", "PartitionProblem"),
    "PlanStage": ("eclm.serving.partition_problem", "PlanStage"),
    "evaluate_plan": ("eclm.serving.partition_problem", "evaluate_plan"),
    "CPU_NEED": ("eclm.serving.placement", "CPU_NEED"),
    "busy_fraction": ("eclm.serving.placement", "busy_fraction"),
    "replica_states": ("eclm.serving.placement", "replica_states"),
    "NodeProfile": ("eclm.serving.planning", "NodeProfile"),
    "SlowdownTracker": ("eclm.serving.planning", "SlowdownTracker"),
    "StageRoute": ("eclm.serving.planning", "StageRoute"),
    "build_problem": ("eclm.serving.planning", "build_problem"),
    "make_plan": ("eclm.serving.planning", "make_plan"),
    "replan": ("eclm.serving.planning", "replan"),
    "routes_for": ("eclm.serving.planning", "routes_for"),
    "strongest_node": ("eclm.serving.planning", "strongest_node"),
    "RepartitionDecision": ("eclm.serving.replan", "RepartitionDecision"),
    "decide_repartition": ("eclm.serving.replan", "decide_repartition"),
    "MicroBatch": ("eclm.serving.requests", "MicroBatch"),
    "RequestLedger": ("eclm.serving.requests", "RequestLedger"),
    "RequestRecord": ("eclm.serving.requests", "RequestRecord"),
    "SCHEDULERS": ("eclm.serving.scheduler", "SCHEDULERS"),
    "Amp4ecScheduler": ("eclm.serving.scheduler", "Amp4ecScheduler"),
    "Amp4ecScore": ("eclm.serving.scheduler", "Amp4ecScore"),
    "LeastLoadedScheduler": ("eclm.serving.scheduler", "LeastLoadedScheduler"),
    "NodeState": ("eclm.serving.scheduler", "NodeState"),
    "NoEligibleNodeError": ("eclm.serving.scheduler", "NoEligibleNodeError"),
    "RequestScheduler": ("eclm.serving.scheduler", "RequestScheduler"),
    "RoundRobinScheduler": ("eclm.serving.scheduler", "RoundRobinScheduler"),
    "create_scheduler": ("eclm.serving.scheduler", "create_scheduler"),
    "plan_costs": ("eclm.serving.session_log", "plan_costs"),
    "plan_record": ("eclm.serving.session_log", "plan_record"),
    "session_metrics": ("eclm.serving.session_log", "session_metrics"),
    "BatchTrace": ("eclm.serving.session_stats", "BatchTrace"),
    "ReplayResult": ("eclm.serving.session_stats", "ReplayResult"),
    "batch_traces": ("eclm.serving.session_stats", "batch_traces"),
    "percentiles": ("eclm.serving.session_stats", "percentiles"),
    "replay_emulated": ("eclm.serving.session_stats", "replay_emulated"),
    "steady_rate": ("eclm.serving.session_stats", "steady_rate"),
    "summarize": ("eclm.serving.session_stats", "summarize"),
    "throughput_timeline": ("eclm.serving.session_stats", "throughput_timeline"),
    "BlockProfile": ("eclm.serving.stages", "BlockProfile"),
    "as_blocks": ("eclm.serving.stages", "as_blocks"),
    "block_memory_bytes": ("eclm.serving.stages", "block_memory_bytes"),
    "measure_block_latencies": ("eclm.serving.stages", "measure_block_latencies"),
    "payload_nbytes": ("eclm.serving.stages", "payload_nbytes"),
    "run_pipeline_inprocess": ("eclm.serving.stages", "run_pipeline_inprocess"),
    "split_into_stages": ("eclm.serving.stages", "split_into_stages"),
    "CODECS": ("eclm.serving.config", "CODECS"),
    "WIRE_RATIO": ("eclm.serving.config", "WIRE_RATIO"),
    "StageMessage": ("eclm.serving.wire", "StageMessage"),
    "decode": ("eclm.serving.wire", "decode"),
    "encode": ("eclm.serving.wire", "encode"),
    "NodeSettings": ("eclm.serving.worker", "NodeSettings"),
    "StageWorker": ("eclm.serving.worker", "StageWorker"),
}

__all__ = [
    "CODECS",
    "CPU_NEED",
    "OBJECTIVES",
    "SCHEDULERS",
    "WIRE_RATIO",
    "Amp4ecScheduler",
    "Amp4ecScore",
    "BatchTrace",
    "BlockProfile",
    "DutyCycle",
    "LeastLoadedScheduler",
    "LinkDelay",
    "MicroBatch",
    "ModelSource",
    "NoEligibleNodeError",
    "NodePacer",
    "NodeProfile",
    "NodeResources",
    "NodeSettings",
    "NodeState",
    "Objective",
    "PartitionPlan",
    "PartitionProblem",
    "PlanStage",
    "RepartitionDecision",
    "RepartitionPolicy",
    "ReplayResult",
    "RequestLedger",
    "RequestRecord",
    "RequestScheduler",
    "ResourceEvent",
    "ResourceMonitor",
    "RoundRobinScheduler",
    "ServingConfig",
    "SlowdownTracker",
    "StageMessage",
    "StageRoute",
    "StageWorker",
    "as_blocks",
    "batch_traces",
    "block_memory_bytes",
    "brute_force_partition",
    "build_chain",
    "build_model",
    "build_problem",
    "busy_fraction",
    "create_scheduler",
    "decide_repartition",
    "decode",
    "dp_partition",
    "encode",
    "evaluate_plan",
    "make_plan",
    "measure_block_latencies",
    "monolithic_plan",
    "payload_nbytes",
    "percentiles",
    "plan_costs",
    "plan_record",
    "proportional_partition",
    "replan",
    "replay_emulated",
    "replica_states",
    "routes_for",
    "run_pipeline_inprocess",
    "session_metrics",
    "split_into_stages",
    "stage_module",
    "steady_rate",
    "strongest_node",
    "summarize",
    "throughput_timeline",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)


# ``replan`` is also the name of a submodule: bind the function now, after that submodule loaded.
from eclm.serving.planning import replan as replan  # noqa: E402
