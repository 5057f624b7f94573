"""Request schedulers: choose the node that serves the next request."""

from eclm.serving.scheduler.amp4ec import Amp4ecScheduler, Amp4ecScore
from eclm.serving.scheduler.base import NodeState, NoEligibleNodeError, RequestScheduler
from eclm.serving.scheduler.factory import SCHEDULERS, create_scheduler
from eclm.serving.scheduler.least_loaded import LeastLoadedScheduler
from eclm.serving.scheduler.round_robin import RoundRobinScheduler

__all__ = [
    "SCHEDULERS",
    "Amp4ecScheduler",
    "Amp4ecScore",
    "LeastLoadedScheduler",
    "NoEligibleNodeError",
    "NodeState",
    "RequestScheduler",
    "RoundRobinScheduler",
    "create_scheduler",
]
