"""Parallel split-learning trainer: equivalence with centralised SGD, learning, traffic, FedAvg."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from eclm.split import (
    FixedEqualSampler,
    GlobalSampler,
    IdentityCodec,
    MaskEncodedSparsification,
    OptimizerSettings,
    ParallelSplitTrainer,
    evaluate,
    replicate,
)

torch.set_num_threads(1)
NUM_CLASSES = 3


def client_part(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU())


def server_part(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(4, 8, 3, stride=2, padding=1),
        nn.GroupNorm(2, 8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, NUM_CLASSES),
    )


def synthetic_clients(sizes: list[int], seed: int = 0, classes_per_client: int | None = None):
    """Images whose class shifts the mean of one channel: linearly separable."""
    rng = np.random.default_rng(seed)
    data = []
    for k, n in enumerate(sizes):
        if classes_per_client is None:
            y = rng.integers(0, NUM_CLASSES, n)
        else:
            y = (k + rng.integers(0, classes_per_client, n)) % NUM_CLASSES
        x = rng.normal(0, 1, (n, 3, 6, 6))
        x[np.arange(n), y] += 2.0
        data.append((torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)))
    return data


def assert_modules_close(a: nn.Module, b: nn.Module, atol: float) -> None:
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(pa, pb, atol=atol, rtol=0, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_single_client_split_equals_centralised_sgd(momentum: float) -> None:
    data = synthetic_clients([40])
    sampler = GlobalSampler([40], 16, seed=2)
    settings = OptimizerSettings(lr=0.1, momentum=momentum)
    client, server = client_part(), server_part()
    central = nn.Sequential(copy.deepcopy(client), copy.deepcopy(server))
    central_opt = settings.build(list(central.parameters()))
    trainer = ParallelSplitTrainer([client], server, IdentityCodec(), sampler, optimizer=settings)

    metrics = [trainer.train_epoch(data) for _ in range(2)]
    for epoch in range(2):
        for (idx,) in sampler.epoch_indices(epoch):
            central_opt.zero_grad()
            F.cross_entropy(central(data[0][0][idx]), data[0][1][idx]).backward()
            central_opt.step()

    assert metrics[0].steps == math.ceil(40 / 16)
    assert_modules_close(trainer.client_model(), central[0], atol=1e-6)
    assert_modules_close(server, central[1], atol=1e-6)


def test_step_synchronised_clients_equal_centralised_sgd_on_global_batches() -> None:
    sizes = [12, 30, 7]
    data = synthetic_clients(sizes, classes_per_client=1)
    sampler = GlobalSampler(sizes, 10, seed=4)
    settings = OptimizerSettings(lr=0.2, momentum=0.5)
    clients, server = replicate(client_part(), 3), server_part()
    central = nn.Sequential(copy.deepcopy(clients[0]), copy.deepcopy(server))
    central_opt = settings.build(list(central.parameters()))
    trainer = ParallelSplitTrainer(
        clients, server, IdentityCodec(), sampler, optimizer=settings, client_sync="step"
    )

    trainer.train_epoch(data, epoch=0)
    for step in sampler.epoch_indices(0):
        x = torch.cat([data[k][0][idx] for k, idx in enumerate(step)])
        y = torch.cat([data[k][1][idx] for k, idx in enumerate(step)])
        central_opt.zero_grad()
        F.cross_entropy(central(x), y).backward()
        central_opt.step()

    for client in clients:
        assert_modules_close(client, central[0], atol=1e-6)
    assert_modules_close(server, central[1], atol=1e-6)


@pytest.mark.parametrize("codec", [IdentityCodec(), MaskEncodedSparsification(0.9, 2)])
@pytest.mark.parametrize("client_sync", ["epoch", "step"])
def test_two_clients_learn_separable_data(codec, client_sync: str) -> None:
    data = synthetic_clients([48, 48], seed=1, classes_per_client=2)
    clients = replicate(client_part(), 2)
    trainer = ParallelSplitTrainer(
        clients,
        server_part(),
        codec,
        GlobalSampler([48, 48], 16, seed=0),
        optimizer=OptimizerSettings(lr=0.1, momentum=0.9),
        client_sync=client_sync,
    )
    x_test, y_test = synthetic_clients([90], seed=9)[0]

    before = evaluate(trainer.client_model(), trainer.server_parts[0], x_test, y_test)
    history = [trainer.train_epoch(data) for _ in range(6)]
    after = evaluate(trainer.client_model(), trainer.server_parts[0], x_test, y_test)

    assert history[-1].loss < 0.6 * history[0].loss
    assert after.loss < 0.6 * before.loss
    assert after.accuracy > 0.8


def test_traffic_accounting_matches_the_codec_layout() -> None:
    sizes = [20, 13]
    data = synthetic_clients(sizes)
    codec = MaskEncodedSparsification(0.9, 3)
    trainer = ParallelSplitTrainer(
        replicate(client_part(), 2), server_part(), codec, FixedEqualSampler(sizes, 8)
    )

    metrics = trainer.train_epoch(data)

    d = 4 * 6 * 6  # smashed elements per sample; ReLU output, so unsigned MS
    k = math.floor(0.1 * d + 1e-9)
    assert metrics.samples == tuple(sizes)
    assert metrics.bits_up == tuple(n * (3 * d + 32 * k) for n in sizes)
    assert metrics.bits_down == tuple(n * 32 * d for n in sizes)
    assert metrics.bytes_up == tuple(b / 8 for b in metrics.bits_up)
    assert metrics.steps == math.ceil(20 / 4)


def test_epoch_sync_averages_clients_of_a_group() -> None:
    sizes = [24, 0, 16]  # client 1 holds no data this epoch: it only receives the average
    data = synthetic_clients(sizes)
    clients = [client_part(seed=s) for s in range(3)]  # deliberately different initial weights
    trainer = ParallelSplitTrainer(clients, server_part(), IdentityCodec(), GlobalSampler(sizes, 8))

    trainer.train_epoch(data)

    for other in clients[1:]:
        assert_modules_close(clients[0], other, atol=0)


def test_cut_groups_with_shared_server_blocks_match_centralised_step() -> None:
    # Chain: block_a -> block_b -> head. Group "deep" runs [a, b] on the client, "shallow" only [a].
    torch.manual_seed(0)
    block_a = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
    block_b = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
    head = nn.Linear(8, NUM_CLASSES)
    deep_client = nn.Sequential(copy.deepcopy(block_a), copy.deepcopy(block_b))
    shallow_client = copy.deepcopy(block_a)
    servers = {"deep": head, "shallow": nn.Sequential(block_b, head)}  # head is shared
    rng = np.random.default_rng(0)
    data = [
        (torch.tensor(rng.normal(size=(n, 6)), dtype=torch.float32), torch.tensor(rng.integers(0, 3, n)))
        for n in (9, 11)
    ]
    reference = copy.deepcopy([deep_client, shallow_client, block_b, head])
    sampler = GlobalSampler([9, 11], 20, seed=0)  # a single step with everybody
    trainer = ParallelSplitTrainer(
        [deep_client, shallow_client], servers, IdentityCodec(), sampler, groups=["deep", "shallow"]
    )

    trainer.train_epoch(data)
    r_deep, r_shallow, r_block_b, r_head = reference
    params = {id(p): p for m in reference for p in m.parameters()}
    opt = OptimizerSettings().build(list(params.values()))
    (idx_deep, idx_shallow) = next(sampler.epoch_indices(0))
    logits = torch.cat(
        [r_head(r_deep(data[0][0][idx_deep])), r_head(r_block_b(r_shallow(data[1][0][idx_shallow])))]
    )
    F.cross_entropy(logits, torch.cat([data[0][1][idx_deep], data[1][1][idx_shallow]])).backward()
    opt.step()

    assert len(trainer.server_optimizer.param_groups[0]["params"]) == 4  # block_b and head, once each
    for trained, ref in [
        (deep_client, r_deep),
        (shallow_client, r_shallow),
        (block_b, r_block_b),
        (head, r_head),
    ]:
        assert_modules_close(trained, ref, atol=1e-6)


def test_evaluate_restores_modes_and_counts_correct_predictions() -> None:
    client, server = client_part(), server_part()
    x, y = synthetic_clients([25])[0]
    server.eval()

    result = evaluate(client, server, x, y, batch_size=7)

    with torch.no_grad():
        logits = server(client(x))
    assert result.accuracy == pytest.approx(float((logits.argmax(1) == y).float().mean()))
    assert result.loss == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    assert client.training and not server.training


def test_trainer_rejects_inconsistent_setup() -> None:
    sampler = GlobalSampler([4, 4], 4)
    shared = client_part()

    with pytest.raises(ValueError, match="distinct"):
        ParallelSplitTrainer([shared, shared], server_part(), IdentityCodec(), sampler)
    with pytest.raises(ValueError, match="sampler has 2 clients"):
        ParallelSplitTrainer([client_part()], server_part(), IdentityCodec(), sampler)
    with pytest.raises(ValueError, match="identical initial weights"):
        ParallelSplitTrainer(
            [client_part(0), client_part(1)], server_part(), IdentityCodec(), sampler, client_sync="step"
        )
    with pytest.raises(ValueError, match="no module for cut group"):
        ParallelSplitTrainer(
            replicate(client_part(), 2), {0: server_part()}, IdentityCodec(), sampler, groups=[0, 1]
        )
    trainer = ParallelSplitTrainer(replicate(client_part(), 2), server_part(), IdentityCodec(), sampler)
    with pytest.raises(ValueError, match="do not match sampler sizes"):
        trainer.train_epoch(synthetic_clients([4, 5]))
