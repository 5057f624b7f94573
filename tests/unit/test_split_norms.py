"""One-sample batches through BatchNorm parts (GPSL can hand a client a single sample)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from eclm.modules import modularize, skeleton
from eclm.pipelines.split_cloud import SplitServerSession
from eclm.pipelines.split_edge import SplitDeviceWorker
from eclm.split.config import SplitConfig
from eclm.split.factory import build_codec, build_sampler, optimizer_settings
from eclm.split.norms import batch_safe_norms

torch.set_num_threads(1)


def pooled_bn_part(seed: int = 0) -> nn.Module:
    """Reaches 1x1 spatial size before a BatchNorm: training mode fails on one sample."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(4), nn.ReLU())


def head(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def test_plain_batchnorm_refuses_one_sample_the_guard_uses_running_statistics():
    part = pooled_bn_part().train()
    x = torch.randn(1, 3, 6, 6)
    with pytest.raises(ValueError, match="more than 1 value"):
        part(x)
    bn = part[2]
    stats = (bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked))
    with batch_safe_norms(part, 1):
        out = part(x)
        assert not bn.training
    out.sum().backward()  # gradients still flow to every learned weight
    assert part[0].weight.grad is not None and bn.weight.grad is not None
    assert bn.training  # restored
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    assert int(bn.num_batches_tracked) == stats[2]


def test_two_samples_keep_batch_statistics():
    part = pooled_bn_part().train()
    before = part[2].running_mean.clone()
    with batch_safe_norms(part, 2):
        assert part[2].training
        part(torch.randn(2, 3, 6, 6))
    assert not torch.equal(part[2].running_mean, before)


def test_eval_parts_stay_in_eval():
    part = pooled_bn_part().eval()
    with batch_safe_norms(part, 1):
        part(torch.randn(1, 3, 6, 6))
    assert not part[2].training


def test_protocol_step_with_a_one_sample_client_and_server_group_trains():
    # Client 0 holds a single sample: GPSL gives it a batch of one in exactly one step. Its cut is
    # its own, so the server runs that cut group on one sample too (layer4 is 1x1 at 16 px, where
    # training-mode BatchNorm refuses a single sample).
    torch.manual_seed(0)
    model = modularize("resnet18", modules_per_layer=2, input_size=(3, 16, 16), num_classes=3,
                       channels=[8, 8, 16, 16]).eval()
    sub = model.extract(model.full_spec())
    sizes, cuts, config = [1, 23], [2, 5], SplitConfig(global_batch=8, lr=0.05)
    server = SplitServerSession(sub, model.chain(sub), model.full_spec(), ["a", "b"], cuts,
                                build_codec(config.codec), optimizer_settings(config), build_sampler(config, sizes))
    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(n, 3, 16, 16, generator=gen), torch.randint(0, 3, (n,), generator=gen)) for n in sizes]
    skel = skeleton(model.arch, 2, (3, 16, 16))
    workers = [SplitDeviceWorker.from_payload(n, skel, server.device_payload(n), config, sizes, k, data[k], data[k])
               for k, n in enumerate(["a", "b"])]
    plan = server.epoch_plan(0)
    (step,) = [t for t, row in enumerate(plan) if row[0] > 0]
    assert plan[step][0] == 1
    stem_bn = next(m for m in workers[0].prefix.modules() if isinstance(m, nn.BatchNorm2d))
    stats = (stem_bn.running_mean.clone(), int(stem_bn.num_batches_tracked))
    weights = [p.detach().clone() for p in workers[0].prefix.parameters()]

    grads = server.server_step(0, step, [w.forward(0, step) for w in workers])
    for worker, grad in zip(workers, grads, strict=True):
        worker.backward(grad)

    assert math.isfinite(server.epoch_summary()["loss"])
    assert torch.equal(stem_bn.running_mean, stats[0]) and int(stem_bn.num_batches_tracked) == stats[1]
    assert stem_bn.training  # back in training mode after the step
    assert any(not torch.equal(p, w) for p, w in zip(workers[0].prefix.parameters(), weights, strict=True))
