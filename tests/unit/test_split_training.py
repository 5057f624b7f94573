"""Split training through the platform's one split protocol, in-process.

Every round here is :func:`eclm.campaign.split_round.run_split_round` over real cloud and edge
services bound by :class:`~eclm.campaign.local.LocalFleet`: equivalence with local SGD, learning
with a compressing codec, exact traffic accounting, and GPSL's use of the data.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from eclm.campaign.local import LocalFleet
from eclm.campaign.split_round import run_split_round
from eclm.config import PlatformConfig
from eclm.modules import unpack_state
from eclm.pipelines.cloud_service import CloudService
from eclm.pipelines.edge_service import EdgeService
from eclm.pipelines.split_edge import unpack_smashed
from eclm.split.factory import build_sampler

torch.set_num_threads(1)


def config(tmp_path, *, devices: int, data: dict | None = None, **split) -> PlatformConfig:
    """Narrow ResNet-18 on clean 16x16 grey digits, every device in split mode."""
    return PlatformConfig.from_dict({
        "name": "split-training", "workdir": str(tmp_path),
        "data": {"source": "digits", "image_size": 16, "channels": 1, "num_devices": devices,
                 "classes_per_device": 3, "samples_per_device": [40, 60], "drift": {"corruptions": ["none"]},
                 **(data or {})},
        "backbone": {"name": "resnet18", "kwargs": {"channels": [8, 8, 16, 16]}, "modules_per_layer": 2},
        "devices": [{"name": f"d{i}", "mode": "split"} for i in range(devices)],
        "split": {"global_batch": 16, "lr": 0.05, "epochs": 1, "cut_policy": "fixed", "fixed_cut": 3,
                  "cost_profile": "flops", **split},
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path}/mlruns.db"},
    })


def round_of(cfg: PlatformConfig, *, spy_cloud=None, spy_device=None):
    """Build the services of ``cfg``, let the spies wrap them, run one split round of ``split.epochs``."""
    cloud = CloudService(cfg)
    edges = {d.name: EdgeService(cfg, i) for i, d in enumerate(cfg.devices)}
    if spy_cloud is not None:
        spy_cloud(cloud)
    for edge in edges.values():
        if spy_device is not None:
            spy_device(edge)
    fleet = LocalFleet(lambda: cloud, {n: (lambda e=e: e) for n, e in edges.items()})
    selector = cloud.selector_payload()
    summaries = {n: e.summary(selector) for n, e in edges.items()}
    result = run_split_round(fleet, summaries, epochs=cfg.split.epochs, version=cloud.version, timeout=120)
    assert not result.failures, result.failures
    return result, cloud, edges


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_single_device_round_equals_local_sgd_on_the_composed_model(tmp_path, momentum: float) -> None:
    cfg = config(tmp_path, devices=1, data={"samples_per_device": [40, 40]}, lr=0.1, momentum=momentum,
                 epochs=2, fixed_cut=4)

    result, cloud, edges = round_of(cfg)

    # The same two epochs of SGD on the composed model, locally, over the batches the sampler drew
    # (40 samples, global batch 16: three steps per epoch). The cloud model is still the start.
    train = edges["d0"].stream.train_set()
    local = cloud.model.extract(result.packages["d0"].spec).train()
    opt = torch.optim.SGD(local.parameters(), lr=0.1, momentum=momentum)
    sampler = build_sampler(cfg.split, [len(train.labels)])
    for epoch in range(2):
        for (idx,) in sampler.epoch_indices(epoch):
            opt.zero_grad()
            F.cross_entropy(local(train.images[idx]), train.labels[idx]).backward()
            opt.step()
    trained, _, _ = unpack_state(result.uploads["d0"].payload)
    assert result.round_metrics["split/d0/steps"] == 6
    for key, value in local.state_dict().items():
        torch.testing.assert_close(trained[key], value, atol=2e-5, rtol=1e-4, msg=key)


def test_round_with_mask_encoded_activations_learns_and_ends_with_one_model(tmp_path) -> None:
    cfg = config(tmp_path, devices=2, epochs=8, codec={"name": "mask_encoded", "ratio": 0.9, "bits": 2})

    result, _, _ = round_of(cfg)

    losses = [e["loss"] for e in result.report["epochs"]]
    assert losses[-1] < 0.5 * losses[0]
    assert all(m.acc_after > m.acc_before + 0.3 for m in result.metrics.values())  # split inference, MS too
    states = [unpack_state(u.payload)[0] for u in result.uploads.values()]
    assert all(torch.equal(v, states[1][k]) for k, v in states[0].items())


def test_round_traffic_is_the_codecs_exact_payload_sizes(tmp_path) -> None:
    sent: dict[str, list[int]] = {}

    def record_encodings(edge: EdgeService) -> None:  # wrap the worker's codec once split_begin made it
        begin = edge.split_begin

        def spied(*args):
            out = begin(*args)
            codec, log = edge._split.codec, sent.setdefault(edge.name, [])
            encode = codec.encode

            def encode_and_log(activation):
                encoded = encode(activation)
                log.append(encoded.size_bits)
                return encoded
            codec.encode = encode_and_log
            return out
        edge.split_begin = spied

    cfg = config(tmp_path, devices=2, sampler="fixed_equal", fixed_cut=1,
                 codec={"name": "mask_encoded", "ratio": 0.9, "bits": 3})

    result, _, _ = round_of(cfg, spy_device=record_encodings)

    d = result.report["costs"]["activation_bytes"][1] // 4  # elements per sample after the stem
    k = math.floor(0.1 * d + 1e-9)
    for name, device in result.report["devices"].items():
        n = result.report["client_sizes"][device["index"]]
        m = result.round_metrics
        # The test set before training, the training steps, the test set after: each at its exact size.
        assert m[f"split/{name}/bits_activations"] == sum(sent[name][1:-1]) == n * (3 * d + 32 * k)  # unsigned MS
        assert m[f"split/{name}/bytes_gradients"] == 4 * d * n
        assert m[f"split/{name}/bytes_labels"] == 8 * n
        assert m[f"split/{name}/steps"] == math.ceil(n / 8)  # fixed equal: 16 / 2 devices per step


def chi_square(batches: list[torch.Tensor], pooled: np.ndarray) -> float:
    """Mean per-step chi-square of the server's global batches' class counts against ``pooled``."""
    stats = []
    for labels in batches:
        counts = np.bincount(labels.numpy(), minlength=len(pooled))
        expected = len(labels) * pooled
        stats.append(float(((counts - expected) ** 2 / np.where(expected > 0, expected, 1)).sum()))
    return float(np.mean(stats))


@pytest.mark.parametrize("sampler", ["global", "fixed_equal"])
def test_round_uses_every_local_sample_once_per_epoch_and_gpsl_the_pooled_class_mix(tmp_path, sampler) -> None:
    received: dict = {"steps": [], "devices": {}}

    def record_batches(cloud: CloudService) -> None:  # what reaches the server in every global step
        step_fn = cloud.split_server_step

        def spied(epoch, step, *messages):
            labels = []
            for message in messages:
                _, y, meta = unpack_smashed(message)
                received["devices"].setdefault((meta["device"], epoch), []).append(y)
                labels.append(y)
            received["steps"].append(torch.cat(labels))
            return step_fn(epoch, step, *messages)
        cloud.split_server_step = spied

    # One class per device and uneven sizes: local batches of equal size distort the class mix.
    cfg = config(tmp_path, devices=4, data={"classes_per_device": 1, "samples_per_device": [10, 120], "seed": 3},
                 sampler=sampler, epochs=2, global_batch=40)

    result, _, edges = round_of(cfg, spy_cloud=record_batches)

    sizes = result.report["client_sizes"]
    assert max(sizes) >= 3 * min(sizes)
    for name, edge in edges.items():
        local = edge.stream.train_set().labels
        for epoch in range(2):
            assert torch.equal(torch.cat(received["devices"][(name, epoch)]).sort().values, local.sort().values)
    pooled = np.bincount(torch.cat([e.stream.train_set().labels for e in edges.values()]).numpy(), minlength=10)
    pooled = pooled / pooled.sum()
    # GPSL's batches are hypergeometric draws from the pooled data: E[chi2] = (C - 1)(N - B)/(N - 1).
    classes, total = int((pooled > 0).sum()), sum(sizes)
    hypergeometric = (classes - 1) * (total - 40) / (total - 1)
    statistic = chi_square(received["steps"], pooled)
    if sampler == "global":
        assert statistic < 1.5 * hypergeometric
    else:
        assert statistic > 2.5 * hypergeometric
