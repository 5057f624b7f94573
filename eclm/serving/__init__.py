"""Adaptive partitioned inference across edge nodes (AMP4EC done honestly), Ray-free core.

Monitor node resources, partition a chain of blocks over ordered nodes (optimal DP or AMP4EC's
proportional baseline), decide when to re-partition, schedule requests, emulate heterogeneous
nodes and links, and cut/profile/run ``nn.Sequential`` stages.
"""

from eclm.serving.config import ServingConfig
from eclm.serving.emulation import DutyCycle, LinkDelay
from eclm.serving.monitor import NodeResources, ResourceEvent, ResourceMonitor
from eclm.serving.partition import (
    OBJECTIVES,
    Objective,
    brute_force_partition,
    dp_partition,
    monolithic_plan,
    proportional_partition,
)
from eclm.serving.partition_problem import PartitionPlan, PartitionProblem, PlanStage, evaluate_plan
from eclm.serving.replan import RepartitionDecision, decide_repartition
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
from eclm.serving.stages import (
    BlockProfile,
    as_blocks,
    block_memory_bytes,
    measure_block_latencies,
    payload_nbytes,
    run_pipeline_inprocess,
    split_into_stages,
)

__all__ = [
    "OBJECTIVES",
    "SCHEDULERS",
    "Amp4ecScheduler",
    "Amp4ecScore",
    "BlockProfile",
    "DutyCycle",
    "LeastLoadedScheduler",
    "LinkDelay",
    "NoEligibleNodeError",
    "NodeResources",
    "NodeState",
    "Objective",
    "PartitionPlan",
    "PartitionProblem",
    "PlanStage",
    "RepartitionDecision",
    "RequestScheduler",
    "ResourceEvent",
    "ResourceMonitor",
    "RoundRobinScheduler",
    "ServingConfig",
    "as_blocks",
    "block_memory_bytes",
    "brute_force_partition",
    "create_scheduler",
    "decide_repartition",
    "dp_partition",
    "evaluate_plan",
    "measure_block_latencies",
    "monolithic_plan",
    "payload_nbytes",
    "proportional_partition",
    "run_pipeline_inprocess",
    "split_into_stages",
]
