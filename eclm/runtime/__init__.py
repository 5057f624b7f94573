"""Starting/connecting Ray and collecting actor results (the driver's only Ray code)."""

from eclm.runtime.ray_runtime import (
    ActorCallError,
    ActorFailure,
    failure_from,
    gather,
    gather_all,
    kill,
    put,
    ray_started,
    shutdown_ray,
    start_ray,
    time_call,
)

__all__ = ["ActorCallError", "ActorFailure", "failure_from", "gather", "gather_all", "kill", "put", "ray_started", "shutdown_ray", "start_ray", "time_call"]
