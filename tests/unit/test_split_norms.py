"""One-sample batches through BatchNorm parts (GPSL can hand a client a single sample)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from eclm.split import GlobalSampler, IdentityCodec, OptimizerSettings, ParallelSplitTrainer
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


def test_split_epoch_with_a_one_sample_client_trains():
    # Client 0 holds a single sample: GPSL gives it a batch of one in exactly one step.
    sizes = [1, 23]
    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(n, 3, 6, 6, generator=gen), torch.randint(0, 3, (n,), generator=gen)) for n in sizes]
    trainer = ParallelSplitTrainer([pooled_bn_part(0), pooled_bn_part(0)], head(), IdentityCodec(),
                                   GlobalSampler(sizes, 8, seed=0), optimizer=OptimizerSettings(lr=0.05))
    metrics = [trainer.train_epoch(data) for _ in range(2)]
    assert all(m.samples == (1, 23) for m in metrics)
    assert all(torch.isfinite(torch.tensor(m.loss)) for m in metrics)
