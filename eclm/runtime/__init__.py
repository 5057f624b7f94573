"""Starting/connecting Ray and collecting actor results (the driver's only Ray code)."""

from eclm.runtime.ray_runtime import (
    ActorFailure,
    gather,
    kill,
    put,
    ray_started,
    shutdown_ray,
    start_ray,
    time_call,
)

__all__ = ["ActorFailure", "gather", "kill", "put", "ray_started", "shutdown_ray", "start_ray", "time_call"]
