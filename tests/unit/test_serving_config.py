"""ServingConfig validation."""

import pytest
from pydantic import ValidationError

from eclm.serving import ServingConfig


def test_defaults_are_the_amp4ec_testbed():
    cfg = ServingConfig()
    assert cfg.n_nodes == 3 and cfg.node_cpu_shares == [1.0, 0.6, 0.4]
    assert len(cfg.node_memory_bytes) == cfg.n_nodes


@pytest.mark.parametrize("kwargs,field", [
    (dict(schedular="amp4ec"), "schedular"),
    (dict(objective="speed"), "objective"),
    (dict(scheduler="random"), "scheduler"),
    (dict(monitor_alpha=0.0), "monitor_alpha"),
    (dict(max_load=1.5), "max_load"),
    (dict(node_cpu_shares=[1.0, 1.5, 0.4]), "node_cpu_shares"),
    (dict(node_cpu_shares=[]), "node_cpu_shares"),
    (dict(node_memory_bytes=[1e9, 0.0, 1e9]), "node_memory_bytes"),
    (dict(node_memory_bytes=[1e9]), "node_memory_bytes"),
    (dict(micro_batch_size=16, max_in_flight=8), "micro_batch_size"),
    (dict(partitioner="monolithic"), "repartition"),
    (dict(repartition_min_gain=1.0), "repartition_min_gain"),
    (dict(link_bandwidth_bytes_per_s=0.0), "link_bandwidth_bytes_per_s"),
])
def test_invalid_configs_name_the_field(kwargs, field):
    with pytest.raises(ValidationError, match=field):
        ServingConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [
    dict(partitioner="monolithic", repartition=False),
    dict(node_cpu_shares=[1.0], node_memory_bytes=None),
    dict(micro_batch_size=4, max_in_flight=4, scheduler="least_loaded", objective="latency"),
])
def test_valid_variants(kwargs):
    cfg = ServingConfig(**kwargs)
    assert ServingConfig.model_validate(cfg.model_dump()) == cfg
