"""Adaptive partitioned inference across edge nodes (AMP4EC done honestly), Ray-free core.

Monitor node resources, partition a chain of blocks over ordered nodes (optimal DP or AMP4EC's
proportional baseline), decide when to re-partition, schedule requests, emulate heterogeneous
nodes and links, and cut/profile/run ``nn.Sequential`` stages. The stage actor's core
(:class:`StageWorker`: rebuild a stage from architecture + safetensors weights, profile, paced
forward) and the coordinator's bookkeeping (:class:`RequestLedger`, :func:`summarize`) live here
too; the Ray shells are ``eclm.actors.serving`` and ``eclm.runtime.serving``.
"""

from eclm.serving.adaptation import RepartitionPolicy
from eclm.serving.config import ServingConfig
from eclm.serving.emulation import DutyCycle, LinkDelay
from eclm.serving.model_source import ModelSource, build_chain, stage_module
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
from eclm.serving.worker import NodeSettings, StageWorker

__all__ = [
    "CPU_NEED",
    "OBJECTIVES",
    "SCHEDULERS",
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
    "StageRoute",
    "StageWorker",
    "as_blocks",
    "batch_traces",
    "block_memory_bytes",
    "brute_force_partition",
    "build_chain",
    "build_problem",
    "busy_fraction",
    "create_scheduler",
    "decide_repartition",
    "dp_partition",
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
