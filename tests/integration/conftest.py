"""Shared fixtures for integration tests: one real local Ray per test module, tiny campaigns."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # bind Ray to 127.0.0.1
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray with the platform's custom resources, shared by a test module."""
    import ray

    from eclm.resources import CLOUD_RESOURCE, EDGE_RESOURCE

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, resources={CLOUD_RESOURCE: 1, EDGE_RESOURCE: 8}, include_dashboard=False,
             object_store_memory=300 * 2**20,
             log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def tiny_config(tmp_path, **overrides) -> dict:
    """A campaign small enough for 2 CPU cores: narrow ResNet, 3 devices, 1-2 epochs."""
    cfg = {
        "name": "itest",
        "workdir": str(tmp_path),
        "cycles": 2,
        "steps_per_cycle": 1,
        "data": {
            "source": "digits", "num_devices": 3, "classes_per_device": 3, "samples_per_device": [60, 80],
            "drift": {"corruptions": ["gaussian_noise", "contrast", "rotation"], "severity": [3, 4], "change_every": 1},
        },
        "backbone": {"name": "resnet18", "kwargs": {"channels": [8, 16, 32, 64]}, "modules_per_layer": 2},
        "offline": {"epochs": 4, "enhance_epochs": 1, "batch_size": 32, "classes_per_subtask": 3},
        "devices": [{"name": "d0"}, {"name": "d1", "params_fraction": 0.6}, {"name": "d2"}],
        "adaptation": {"epochs": 3, "lr": 0.02, "batch_size": 16},
        "ray": {"edge_cpus": 0.2, "cloud_cpus": 0.5, "call_timeout_s": 300},
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path}/mlruns.db"},
    }
    for key, value in overrides.items():
        section, _, field = key.partition(".")
        if field:
            cfg.setdefault(section, {})[field] = value
        else:
            cfg[section] = value
    return cfg
