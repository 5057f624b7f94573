"""What a device measures in a cycle: 10-way and own-class accuracies, and the cloud's budget for it."""

from __future__ import annotations

import pytest
import torch

from eclm.config import PlatformConfig
from eclm.pipelines.cloud_service import CloudService
from eclm.pipelines.edge_service import EdgeService

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> PlatformConfig:
    return PlatformConfig.from_dict({
        "name": "device-metrics", "workdir": str(tmp_path_factory.mktemp("device-metrics")),
        "data": {"source": "digits", "image_size": 16, "num_devices": 2, "classes_per_device": 3,
                 "samples_per_device": [30, 40],
                 "drift": {"corruptions": ["gaussian_noise", "contrast"], "severity": [2, 3], "change_every": 1}},
        "backbone": {"name": "resnet18", "kwargs": {"channels": [8, 8, 16, 16]}, "modules_per_layer": 2},
        "devices": [{"name": "d0", "params_fraction": 0.6}, {"name": "d1"}],
        "adaptation": {"epochs": 1},
        "tracking": {"enabled": False},
    })


@pytest.fixture(scope="module")
def cloud(cfg) -> CloudService:
    return CloudService(cfg)


def test_device_reports_own_class_accuracy_beside_the_10_way_one(cfg, cloud):
    # Every test label is one of the device's classes, so restricting the argmax to them can only help.
    edge = EdgeService(cfg, 0)
    edge.advance(1)
    package = cloud.derive(edge.summary(cloud.selector_payload()))
    edge.install(package, cloud.info().costs)

    adapted = edge.adapt().metrics
    edge.advance(1)  # a new environment: the one adapted to becomes the previous one
    summary = edge.summary(None)
    held = edge.evaluate()

    for ten_way, own in [(adapted.acc_before, adapted.acc_before_own), (adapted.acc_after, adapted.acc_after_own),
                         (adapted.prev_acc_after, adapted.prev_acc_after_own),
                         (summary.held_previous_accuracy, summary.held_previous_accuracy_own),
                         (held.acc_after, held.acc_after_own)]:
        assert ten_way is not None and own is not None and ten_way <= own <= 1.0
    # Nothing was delivered in between: the summary and the evaluation measure the same model and data.
    assert held.acc_before_own == held.acc_after_own
    assert held.prev_acc_after_own == summary.held_previous_accuracy_own


def test_the_package_carries_the_budget_the_cloud_computes_for_the_device(cfg, cloud):
    edge = EdgeService(cfg, 0)
    summary = edge.summary(cloud.selector_payload())

    package = cloud.derive(summary)

    budget = cloud.budget(edge.name, summary.resources)
    assert package.budget == budget.limits()
    assert budget.max_params == 0.6 * cloud.info().full_cost["params"]
    assert package.cost["params"] <= budget.max_params


def test_a_device_reports_its_clipped_steps_only_when_it_clips(cfg, cloud):
    clipping = cfg.model_copy(update={"adaptation": cfg.adaptation.model_copy(update={"max_grad_norm": 1e-6})})
    reports = []
    for config in (cfg, clipping):
        edge = EdgeService(config, 1)
        edge.install(cloud.derive(edge.summary(cloud.selector_payload())), cloud.info().costs)
        reports.append(edge.adapt().metrics)
    plain, clipped = reports
    assert plain.clipped_steps is None and plain.max_grad_norm_seen is None
    # a clip below every gradient's norm clips every step
    assert clipped.batches > 0 and clipped.clipped_steps == clipped.batches and clipped.max_grad_norm_seen > 1e-6
