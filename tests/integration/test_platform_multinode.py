"""Multi-node placement on one machine: a ``cloud`` head and three labelled ``edge`` nodes.

``ray.cluster_utils.Cluster`` starts one raylet per node on loopback. The platform connects by
address (as ``eclm run --address ...`` does on a real cluster), and every actor must land on a
node that offers the custom resource it asked for; a device pinned with ``node: n2`` must land
on the node labelled ``eclm/node=n2`` (``ray start --labels``), and in pooled mode the pools
spread over the nodes ``ray.pool_nodes`` names.
"""

from __future__ import annotations

import os
import socket

import pytest
from conftest import tiny_config

from eclm.platform import Platform
from eclm.resources import CLOUD_RESOURCE, EDGE_RESOURCE, NODE_LABEL

pytestmark = pytest.mark.integration

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before any Ray process starts: bind to loopback

NODE_MEMORY = 80 * 2**20


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    # A free dashboard port: another Ray on this machine may hold the default 8265, and without
    # a dashboard the state API (list_actors) has nothing to ask.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dashboard_port = sock.getsockname()[1]
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {CLOUD_RESOURCE: 2}, "object_store_memory": NODE_MEMORY,
        "dashboard_port": dashboard_port})
    for node in ("n1", "n2", "n3"):
        c.add_node(num_cpus=1, resources={EDGE_RESOURCE: 3}, labels={NODE_LABEL: node},
                   object_store_memory=NODE_MEMORY)
    c.wait_for_nodes()
    yield c
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def platform(cluster, tmp_path_factory):
    import ray

    tmp = tmp_path_factory.mktemp("multinode")
    cfg = tiny_config(tmp, devices=[{"name": "d0"}, {"name": "d1", "node": "n2"}, {"name": "d2"}],
                      **{"ray.address": cluster.address, "tracking.enabled": False})
    p = Platform(cfg).start()  # connects to the cluster by address
    try:
        ray.get([p.fleet.actor(n).ping.remote() for n in p.names])  # every edge actor is up
        yield p
    finally:
        p.shutdown()


def _actor_nodes(address: str) -> dict[str, dict[str, float | str]]:
    """Id (hex) of every live actor -> resources and labels of the node it runs on (per Ray's state API)."""
    import ray
    from ray.util.state import list_actors

    resources = {n["NodeID"]: {**n["Resources"], **n.get("Labels", {})} for n in ray.nodes() if n["Alive"]}
    try:
        # The explicit address matters: with several Ray instances on the machine, the state API
        # would otherwise pick "the latest" one, which may not be this cluster.
        actors = {a.actor_id: a.node_id for a in list_actors(address=address, filters=[("state", "=", "ALIVE")])}
    except ConnectionError:  # dashboard not up (e.g. an overloaded machine): ask the GCS directly
        from ray._private import state

        actors = {a["ActorID"]: a["Address"]["NodeID"] for a in state.actors().values() if a["State"] == "ALIVE"}
    return {actor: resources[node] for actor, node in actors.items()}


def test_the_platform_joined_the_cluster(platform, cluster):
    import ray

    assert platform._owns_ray  # it connected by address itself
    alive = [n for n in ray.nodes() if n["Alive"]]
    assert len(alive) == 4
    assert sum(n["Resources"].get(EDGE_RESOURCE, 0) for n in alive) == 9


def test_every_actor_lands_on_a_node_of_its_kind(platform, cluster):
    nodes = _actor_nodes(cluster.address)
    cloud = platform.fleet.cloud.actor._actor_id.hex()
    edges = {n: platform.fleet.actor(n)._actor_id.hex() for n in platform.names}
    assert cloud in nodes and set(edges.values()) <= set(nodes)
    assert CLOUD_RESOURCE in nodes[cloud] and EDGE_RESOURCE not in nodes[cloud]
    for device, actor in edges.items():
        assert EDGE_RESOURCE in nodes[actor] and CLOUD_RESOURCE not in nodes[actor], device


def test_a_pinned_device_lands_on_its_node(platform, cluster):
    nodes = _actor_nodes(cluster.address)
    assert nodes[platform.fleet.actor("d1")._actor_id.hex()].get(NODE_LABEL) == "n2"


def test_a_cycle_runs_across_the_nodes(platform):
    platform.pretrain()
    res = platform.run_cycle()
    assert not res.failures and set(res.device_metrics) == {"d0", "d1", "d2"}
    assert all(res.bytes_up[n] > 0 and res.bytes_down[n] > 0 for n in platform.names)
    assert res.merge.decision in ("accept", "partial", "reject") and res.merge.reason


def test_pools_spread_over_the_labelled_nodes_and_a_campaign_runs(cluster, tmp_path):
    # A second campaign next to the first (two cloud slots on the head; three edge slots per node, so a
    # pool fits beside whichever of d0-d2 a node hosts): 4 devices in 2 pools, pool 0 (p0, p2) on n1 and
    # pool 1 (p1, p3) on n3; one offline epoch, then two steps with a cycle each.
    devices = [{"name": f"p{i}"} for i in range(4)]
    cfg = tiny_config(tmp_path, name="itest-pooled", devices=devices, adaptation={"epochs": 1, "batch_size": 16},
                      offline={"epochs": 1, "enhance_epochs": 0, "batch_size": 32, "classes_per_subtask": 3},
                      **{"data.num_devices": 4, "ray.address": cluster.address, "ray.edge_pool_size": 2,
                         "ray.pool_nodes": ["n1", "n3"], "tracking.enabled": False})
    with Platform(cfg, progress=False) as pooled:
        pooled.pretrain()
        results = pooled.run(2)
        nodes = _actor_nodes(cluster.address)
        where = {n: nodes[pooled.fleet.actor(n)._actor_id.hex()].get(NODE_LABEL) for n in pooled.names}
    assert where == {"p0": "n1", "p2": "n1", "p1": "n3", "p3": "n3"}
    assert len(results) == 2 and all(not r.failures for r in results)
    assert all(set(r.device_metrics) == set(where) for r in results)
