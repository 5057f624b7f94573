"""Stage actors: :class:`~eclm.serving.worker.StageWorker` placed as (emulated) edge nodes, and their pool.

Thin shell: ``ray.remote`` is applied here, where stage actors are created, with resources from
the serving config. Methods are the worker's; activations arrive as Ray object refs resolved by
Ray, weights as safetensors bytes, everything else as plain dicts.
"""

from __future__ import annotations

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError

from eclm.resources import node_selector
from eclm.serving.config import ServingConfig
from eclm.serving.worker import NodeSettings, StageWorker

StageActor = ray.remote(StageWorker)


def create_stage_actor(config: ServingConfig, node: int, name: str | None = None):
    """Start the stage actor of node ``node``.

    It reserves ``stage_actor_cpus`` CPUs; with ``node_labels`` set it also selects the node
    labelled ``eclm/node=<label>`` so that it lands on that real node. ``max_concurrency=1``: one
    forward pass at a time, as on a single-core node; control calls queue behind forwards.
    ``max_restarts=0``: a dead stage is replaced by the coordinator, which reloads its blocks.
    """
    options = {"num_cpus": config.stage_actor_cpus, "max_concurrency": 1, "max_restarts": 0}
    if config.node_labels is not None:
        options["label_selector"] = node_selector(config.node_labels[node])
    if name:
        options["name"] = name
    return StageActor.options(**options).remote(NodeSettings.from_config(config, node).model_dump())


def _kill(actor) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - already dead
        pass


class StagePool:
    """One stage actor per node of a serving config; creates, reconfigures and replaces them.

    Args:
        config: The serving config (node count, shares, links, actor resources).
        start_timeout_s: Seconds to wait for the actors to come up.

    Raises:
        RuntimeError: If an actor does not start in time.
    """

    def __init__(self, config: ServingConfig, start_timeout_s: float = 180.0) -> None:
        self.config = config
        self.owner = True
        self.actors = [create_stage_actor(config, i) for i in range(config.n_nodes)]
        try:
            ray.get([a.ping.remote() for a in self.actors], timeout=start_timeout_s)
        except (GetTimeoutError, RayError) as err:
            self.close()
            raise RuntimeError(f"stage actors did not start: {err}") from err

    def view(self, config: ServingConfig) -> StagePool:
        """A pool over this pool's first ``config.n_nodes`` actors, configured to ``config``.

        Lets one set of started actors serve configs with fewer nodes (actor start-up costs
        seconds). Closing the view does not kill the actors; replacements made through it are
        written back to this pool.

        Raises:
            ValueError: If ``config`` has more nodes than this pool.
        """
        if config.n_nodes > len(self.actors):
            raise ValueError(f"pool has {len(self.actors)} actors, config needs {config.n_nodes}")
        sub = object.__new__(StagePool)
        sub.config, sub.owner, sub.actors = config, False, _SharedList(self.actors, config.n_nodes)
        sub.configure(config)
        return sub

    def configure(self, config: ServingConfig) -> None:
        """Apply another config's node settings to the running actors (same node count).

        Raises:
            ValueError: If ``config`` has a different number of nodes.
        """
        if config.n_nodes != len(self.actors):
            raise ValueError(f"pool has {len(self.actors)} nodes, config has {config.n_nodes}")
        self.config = config
        ray.get([a.configure_node.remote(NodeSettings.from_config(config, i).model_dump())
                 for i, a in enumerate(self.actors)])

    def replace(self, node: int, cpu_share: float | None = None):
        """Kill node ``node``'s actor (if still alive) and start a fresh one; returns its handle."""
        _kill(self.actors[node])
        actor = create_stage_actor(self.config, node)
        if cpu_share is not None and cpu_share != self.config.node_cpu_shares[node]:
            ray.get(actor.set_cpu_share.remote(cpu_share))
        self.actors[node] = actor
        return actor

    def unresponsive(self, nodes: list[int], timeout_s: float) -> list[int]:
        """Nodes whose actor is dead or does not answer a ping within ``timeout_s`` seconds.

        An actor that answers with an error is alive; a hung one counts as dead (:meth:`replace`
        kills it).
        """
        pings = {node: self.actors[node].ping.remote() for node in nodes}
        ready, _ = ray.wait(list(pings.values()), num_returns=len(pings), timeout=timeout_s)
        dead = []
        for node, ref in pings.items():
            if ref not in ready:
                dead.append(node)
                continue
            try:
                ray.get(ref)
            except RayActorError:
                dead.append(node)
            except RayError:
                pass
        return dead

    def close(self) -> None:
        """Kill every stage actor (a :meth:`view` kills nothing)."""
        if not self.owner:
            return
        for actor in self.actors:
            _kill(actor)
        self.actors = []


class _SharedList(list):
    """The first ``n`` items of another list; item assignment writes through to it."""

    def __init__(self, base: list, n: int) -> None:
        super().__init__(base[:n])
        self._base = base

    def __setitem__(self, index, value) -> None:
        super().__setitem__(index, value)
        self._base[index] = value
