"""The deployment fields of ServingConfig and ServingConfig.with_nodes."""

import pytest
from pydantic import ValidationError

from eclm.serving import NodeSettings, ServingConfig


@pytest.mark.parametrize("nodes,shares,memory,labels", [
    ([1.0, 0.5], [1.0, 0.5], None, None),
    ([{"cpu_share": 0.8, "memory_bytes": 1e9, "label": "pi-1"}, {"cpu_share": 0.3, "memory_bytes": 5e8,
                                                                  "label": "pi-2"}],
     [0.8, 0.3], [1e9, 5e8], ["pi-1", "pi-2"]),
    ([{"cpu_share": 0.8, "memory_bytes": 1e9}, 0.3], [0.8, 0.3], None, None),  # memory only if every node has it
])
def test_with_nodes(nodes, shares, memory, labels):
    cfg = ServingConfig().with_nodes(nodes)
    assert (cfg.node_cpu_shares, cfg.node_memory_bytes, cfg.node_labels) == (shares, memory, labels)
    assert cfg.n_nodes == len(nodes)


@pytest.mark.parametrize("nodes,error,match", [
    ([], ValueError, "non-empty"),
    ("1.0", ValueError, "non-empty"),
    ([1.0, 1.2], ValidationError, "node_cpu_shares"),
    ([{"share": 0.5}], ValueError, "cpu_share"),
    ([{"cpu_share": 0.5, "gpu": 1}], ValueError, "cpu_share"),
    ([None], TypeError, "nodes\\[0\\]"),
    ([{"cpu_share": 0.5, "label": "has space"}], ValidationError, "node_labels"),
])
def test_with_nodes_rejects_bad_nodes(nodes, error, match):
    with pytest.raises(error, match=match):
        ServingConfig().with_nodes(nodes)


@pytest.mark.parametrize("kwargs,field", [
    (dict(placement="mesh"), "placement"),
    (dict(emulation_scale=0.0), "emulation_scale"),
    (dict(emulation_scale=1.5), "emulation_scale"),
    (dict(node_labels=["a"]), "node_labels"),
    (dict(stage_actor_cpus=0), "stage_actor_cpus"),
    (dict(max_retries=-1), "max_retries"),
    (dict(request_timeout_s=0), "request_timeout_s"),
    (dict(heap_retain_mib=-1), "heap_retain_mib"),
])
def test_invalid_deployment_fields_name_the_field(kwargs, field):
    with pytest.raises(ValidationError, match=field):
        ServingConfig(**kwargs)


def test_node_settings_follow_the_config():
    cfg = ServingConfig(emulation_scale=0.5, link_latency_s=0.002, heap_retain_mib=32)
    s = NodeSettings.from_config(cfg, 2)
    assert (s.node, s.cpu_share, s.memory_bytes, s.emulation_scale, s.link_latency, s.heap_retain_mib) == (
        2, 0.4, cfg.node_memory_bytes[2], 0.5, 0.002, 32)
    with pytest.raises(ValueError, match="node"):
        NodeSettings.from_config(cfg, 3)
