"""The cloud service wires the defences: forged claims reject only the forger, the report says why.

In-process services (no Ray) on the embedded digits data. Before the defences, an upload claiming
``inf`` samples raised out of ``CloudService.merge`` and sank every device's update.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from eclm.campaign.messages import AttributedUpdate, DeviceMetrics, DeviceUpdate
from eclm.config import PlatformConfig
from eclm.pipelines.cloud_service import CloudService
from eclm.pipelines.edge_service import EdgeService

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def round_(tmp_path_factory):
    cfg = PlatformConfig.from_dict({
        "name": "defences", "workdir": str(tmp_path_factory.mktemp("defences")),
        "data": {"source": "digits", "image_size": 16, "num_devices": 2, "classes_per_device": 3,
                 "samples_per_device": [30, 40]},
        "backbone": {"name": "resnet18", "kwargs": {"channels": [8, 8, 16, 16]}, "modules_per_layer": 2},
        "adaptation": {"epochs": 1},
        "merge": {"tolerance": 1.0, "device_tolerance": 1.0, "max_drop": None, "device_max_drop": None},
        "tracking": {"enabled": False},
    })
    cloud, edges = CloudService(cfg), [EdgeService(cfg, i) for i in range(2)]
    for edge in edges:
        edge.install(cloud.derive(edge.summary(cloud.selector_payload())), cloud.info().costs)
    return cloud, [AttributedUpdate(channel=e.name, issued=e.spec, enrolled_classes=e.classes, update=e.adapt())
                   for e in edges]


def _forged(item: AttributedUpdate, **fields) -> AttributedUpdate:
    """Claims set without validation, as a device that skips it (or an unpickled reply) would."""
    return item.model_copy(update={"update": DeviceUpdate.model_construct(**(dict(item.update) | fields))})


FORGERIES = [
    ("inf samples", {"num_samples": math.inf}, "num_samples"),
    ("importance 1e9", "importance", "importance"),
    ("foreign classes", "classes", "did not enroll with"),
    ("NaN metric", {"metrics": DeviceMetrics.model_construct(acc_after=math.nan)}, "metrics.acc_after"),
]


@pytest.mark.parametrize(("case", "forgery", "reason"), FORGERIES, ids=[f[0] for f in FORGERIES])
def test_a_forged_claim_rejects_only_the_forger(round_, case, forgery, reason):
    cloud, (honest, forger) = copy.deepcopy(round_[0]), round_[1]
    if forgery == "importance":
        forgery = {"importance": tuple((1e9,) * len(row) for row in forger.update.importance)}
    elif forgery == "classes":
        forgery = {"classes": tuple(c for c in range(10) if c not in forger.update.classes)[:2]}
    report = cloud.merge([honest, _forged(forger, **forgery)])
    assert reason in report.rejected[forger.channel], report.rejected
    assert report.accepted == (honest.channel,) and cloud.version == 1
    assert report.screen[honest.channel]["passed"]


def test_the_report_carries_the_screen_and_the_paired_test(round_):
    cloud, uploads = copy.deepcopy(round_[0]), round_[1]
    report = cloud.merge(uploads)
    assert set(report.screen) == {u.channel for u in uploads}
    assert all(s["trust_cosine"] is not None for s in report.screen.values())  # a reference per device
    # the paired test runs on the proxy validation set, clean and under every environment reported
    reported = {(u.update.metrics.environment, u.update.metrics.severity) for u in uploads
                if u.update.metrics.environment not in (None, "none")}
    assert report.paired["n"] == cloud.info().proxy_val * (1 + len(reported))
