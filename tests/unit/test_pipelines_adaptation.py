"""Edge adaptation: norm recalibration, fine-tuning with replay and local-class restriction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from eclm.data.replay import ReplayBuffer
from eclm.modules import SubModelSpec, modularize
from eclm.pipelines.adaptation import (
    evaluate,
    evaluate_own,
    finetune,
    recalibrate_norms,
    training_memory_bytes,
)


@pytest.fixture(scope="module")
def submodel_factory():
    model = modularize("resnet18", modules_per_layer=2, num_classes=10, channels=(8, 16, 32, 64)).eval()
    spec = SubModelSpec(model_id=model.model_id, groups=[(0,)] * len(model.layers))
    return lambda: model.extract(spec)


def _data(n: int, classes: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.tensor(classes)[torch.randint(len(classes), (n,), generator=gen)]
    # Class-dependent mean so the task is learnable in a few steps.
    x = 0.3 * torch.randn(n, 3, 32, 32, generator=gen) + (y.float() / 10).view(-1, 1, 1, 1)
    return x, y


def test_recalibrate_norms_sets_running_stats_to_the_data_statistics():
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(4))
        net[0].bias.zero_()
    gen = torch.Generator().manual_seed(0)
    x = 3.0 * torch.randn(512, 4, generator=gen) + torch.tensor([5.0, -2.0, 0.0, 10.0])
    bn = net[1]
    assert not torch.allclose(bn.running_mean, x.mean(0), atol=0.5)

    count = recalibrate_norms(net, x, batch_size=64)

    assert count == 1
    # Equal batches: the cumulative average of batch means is the data mean.
    torch.testing.assert_close(bn.running_mean, x.mean(0), rtol=0, atol=1e-4)
    torch.testing.assert_close(bn.running_var, x.var(0), rtol=0.05, atol=0)
    assert bn.momentum == 0.1 and not bn.training and not net.training  # settings restored


def test_recalibrate_norms_on_a_submodel_changes_only_statistics(submodel_factory):
    sub = submodel_factory()
    x, _ = _data(64, [0, 1, 2])
    params = {k: v.clone() for k, v in sub.named_parameters()}
    stats = {k: v.clone() for k, v in sub.named_buffers() if "running_mean" in k}

    count = recalibrate_norms(sub, x)

    assert count == sum(isinstance(m, nn.BatchNorm2d) for m in sub.modules()) > 0
    assert all(torch.equal(v, params[k]) for k, v in sub.named_parameters())
    changed = [k for k, v in sub.named_buffers() if "running_mean" in k and not torch.equal(v, stats[k])]
    assert len(changed) == len(stats)
    assert torch.isfinite(sub.bn1.running_var).all() and bool((sub.bn1.running_var > 0).all())


@pytest.mark.parametrize("n", [0, 1])
def test_recalibrate_norms_needs_two_samples(n):
    net = nn.Sequential(nn.BatchNorm1d(2))
    before = net[0].running_mean.clone()
    assert recalibrate_norms(net, torch.randn(n, 2)) == 0
    assert torch.equal(net[0].running_mean, before)


def test_finetune_with_local_classes_leaves_absent_class_rows_unchanged(submodel_factory):
    torch.set_num_threads(1)
    local = [1, 4, 7]
    sub = submodel_factory()
    x, y = _data(48, local)
    w0, b0 = sub.fc.weight.detach().clone(), sub.fc.bias.detach().clone()

    stats = finetune(sub, x, y, epochs=2, lr=0.05, batch_size=16, local_classes=local)

    absent = [c for c in range(10) if c not in local]
    assert torch.equal(sub.fc.weight[absent], w0[absent]) and torch.equal(sub.fc.bias[absent], b0[absent])
    assert not torch.equal(sub.fc.weight[local], w0[local])
    assert stats.batches == 6 and stats.samples == 96 and not sub.training


def test_finetune_without_restriction_moves_absent_class_rows(submodel_factory):
    local = [1, 4, 7]
    sub = submodel_factory()
    x, y = _data(48, local)
    w0 = sub.fc.weight.detach().clone()
    finetune(sub, x, y, epochs=1, lr=0.05, batch_size=16)
    absent = [c for c in range(10) if c not in local]
    assert not torch.equal(sub.fc.weight[absent], w0[absent])


def test_finetune_learns_the_local_task(submodel_factory):
    sub = submodel_factory()
    x, y = _data(64, [0, 5, 9], seed=1)
    acc_before = evaluate(sub, x, y)[0]
    stats = finetune(sub, x, y, epochs=6, lr=0.05, batch_size=16, local_classes=[0, 5, 9])
    acc_after, loss_after = evaluate(sub, x, y)
    assert stats.loss_last_epoch < stats.loss_first_epoch
    assert acc_after > acc_before and acc_after >= 0.6


def test_finetune_mixes_replay_and_then_stores_the_fresh_samples(submodel_factory):
    sub = submodel_factory()
    replay = ReplayBuffer(capacity=100, seed=0)
    old_x, old_y = _data(20, [2, 3], seed=2)
    replay.add(old_x, old_y)
    x, y = _data(32, [1, 4], seed=3)
    stats = finetune(sub, x, y, epochs=1, lr=0.01, batch_size=16, replay=replay, replay_ratio=0.5,
                     local_classes=[1, 4])
    assert stats.samples == 32 + 2 * 8  # each batch of 16 grows by round(0.5 x 16) replayed samples
    assert len(replay) == 52 and replay.seen == 52


def test_finetune_with_zero_epochs_changes_nothing(submodel_factory):
    sub = submodel_factory()
    state = {k: v.clone() for k, v in sub.state_dict().items()}
    x, y = _data(16, [0, 1])
    stats = finetune(sub, x, y, epochs=0, lr=0.1, batch_size=8)
    assert stats.batches == 0 and all(torch.equal(v, state[k]) for k, v in sub.state_dict().items())


def test_evaluate_on_empty_data_is_nan_and_restores_mode():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).train()
    acc, loss = evaluate(net, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert acc != acc and loss != loss
    evaluate(net, torch.randn(5, 4), torch.zeros(5, dtype=torch.long))
    assert net.training


def test_own_class_accuracy_restricts_the_argmax_to_the_given_classes():
    # Logits are the inputs: sample 0 is right 10-way, sample 1 only within classes {1, 2}, sample 2 never.
    logits = torch.tensor([[0.0, 5.0, 1.0, 0.0], [9.0, 1.0, 2.0, 0.0], [0.0, 3.0, 1.0, 9.0]])
    y = torch.tensor([1, 2, 2])

    acc, loss, own = evaluate_own(nn.Identity(), logits, y, [2, 1], batch_size=2)

    assert (acc, own) == pytest.approx((1 / 3, 2 / 3))
    assert (acc, loss) == evaluate(nn.Identity(), logits, y, batch_size=2)
    assert evaluate_own(nn.Identity(), logits, y, None)[2] == acc  # no classes: the 10-way accuracy


def test_training_memory_formula():
    # 3 copies x 4 bytes per param + activations and their gradients per sample x batch.
    assert training_memory_bytes(1000, 500, 8) == 12_000 + 12_000


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _moved(model: nn.Module, before: dict[str, torch.Tensor]) -> float:
    return float(sum((v.detach() - before[k]).pow(2).sum() for k, v in model.named_parameters()) ** 0.5)


def test_a_clipped_step_moves_the_weights_at_most_lr_times_the_clip(submodel_factory):
    # one plain SGD step (one batch, no momentum) on inputs scaled up so that the loss spikes
    x, y = _data(16, [0, 5, 9], seed=4)
    x = 50 * x
    free, clipped = submodel_factory(), submodel_factory()
    start = _weights(free)
    finetune(free, x, y, epochs=1, lr=0.1, batch_size=16, momentum=0.0)
    stats = finetune(clipped, x, y, epochs=1, lr=0.1, batch_size=16, momentum=0.0, max_grad_norm=1.0)
    assert stats.batches == 1 and stats.clipped == 1 and stats.max_grad_norm_seen > 1.0
    assert _moved(clipped, start) <= 0.1 * 1.0 * (1 + 1e-4) < _moved(free, start)


def test_a_clip_no_step_reaches_changes_nothing_and_no_clip_reports_nothing(submodel_factory):
    x, y = _data(48, [1, 2, 3], seed=5)
    plain, loose = submodel_factory(), submodel_factory()
    free = finetune(plain, x, y, epochs=2, lr=0.05, batch_size=16)
    stats = finetune(loose, x, y, epochs=2, lr=0.05, batch_size=16, max_grad_norm=1e9)
    assert free.clipped is None and free.max_grad_norm_seen is None
    assert stats.clipped == 0 and 0 < stats.max_grad_norm_seen < 1e9
    for (k, a), b in zip(plain.state_dict().items(), loose.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_max_grad_norm_must_be_positive():
    from pydantic import ValidationError

    from eclm.config import AdaptationConfig

    assert AdaptationConfig().max_grad_norm is None and AdaptationConfig(max_grad_norm=5).max_grad_norm == 5.0
    with pytest.raises(ValidationError, match="max_grad_norm"):
        AdaptationConfig(max_grad_norm=0)
