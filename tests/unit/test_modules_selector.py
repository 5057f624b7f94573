"""Unified module selector: noisy top-k gating, straight-through gradients, load balancing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from eclm.modules import ModularModel, ModuleSelector, load_balance_loss, modularize, noisy_top_k

LAYER_SIZES = [4, 2, 3, 8]


@pytest.fixture
def modular() -> ModularModel:
    """A fresh small model per test (cheap to build; some tests change the selector)."""
    torch.manual_seed(0)
    model = modularize("resnet18", modules_per_layer=4, num_classes=10, channels=(16, 32, 64, 128))
    # Non-trivial norms: timm zero-initialises each block's last BN weight, which would make
    # every module's output (and so every gate) irrelevant.
    with torch.no_grad():
        for m in model.backbone.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _randomise_heads(selector: ModuleSelector) -> None:
    with torch.no_grad():
        for head in list(selector.heads) + list(selector.noise):
            head.weight.normal_(0, 1.0)
            head.bias.normal_(0, 1.0)


def test_zero_initialised_selector_with_all_modules_gives_unit_gates() -> None:
    selector = ModuleSelector(LAYER_SIZES, in_chans=3, width=8, embed_dim=16)
    logits, noise = selector(torch.randn(5, 3, 32, 32))

    for lg, ns, n in zip(logits, noise, LAYER_SIZES, strict=True):
        gates, probs, mask = noisy_top_k(lg, ns, n, noisy=False)

        assert gates.shape == (5, n)
        assert (gates - 1.0).abs().max() < 1e-6
        assert torch.equal(mask, torch.ones(5, n))
        assert torch.allclose(probs, torch.full((5, n), 1.0 / n))


def test_uniform_routing_reproduces_dense_model(modular: ModularModel) -> None:
    x = torch.randn(4, 3, 32, 32)

    with torch.no_grad():
        routing = modular.route(x, max(modular.layer_sizes), noisy=False)
        dense = modular(x)
        routed = modular(x, routing.gates)
        top1 = modular(x, modular.route(x, 1, noisy=False).gates)

    for g in routing.gates:
        assert (g - 1.0).abs().max() < 1e-6
    assert float((routed - dense).abs().max() / dense.abs().max()) < 1e-5
    assert float((top1 - dense).abs().max() / dense.abs().max()) > 1e-3  # the gates do matter


@pytest.mark.parametrize(("n", "k"), [(4, 1), (4, 2), (8, 3), (3, 3), (6, 5)])
@pytest.mark.parametrize("noisy", [False, True])
def test_top_k_mask_has_k_ones_and_forward_gates_are_binary(n: int, k: int, noisy: bool) -> None:
    logits = torch.randn(16, n)
    noise = torch.rand(16, n)

    gates, probs, mask = noisy_top_k(logits, noise, k, noisy=noisy, straight_through=True)

    assert torch.equal(mask.sum(-1), torch.full((16,), float(k)))
    assert torch.equal(gates, mask)  # the forward value is exactly the 0/1 mask
    assert torch.allclose(probs.sum(-1), torch.ones(16))
    if not noisy:
        assert torch.equal(mask, torch.zeros(16, n).scatter(-1, logits.topk(k, -1).indices, 1.0))


@pytest.mark.parametrize(("n", "k"), [(4, 2), (5, 5), (6, 1)])
def test_soft_gates_average_to_one_over_active_set(n: int, k: int) -> None:
    logits = torch.randn(10, n)

    gates, _, mask = noisy_top_k(logits, None, k, noisy=False, straight_through=False)

    assert torch.allclose(gates.sum(-1), torch.full((10,), float(k)), atol=1e-5)
    assert torch.equal(gates > 0, mask > 0)


def test_straight_through_gradient_reaches_selector_heads(modular: ModularModel) -> None:
    _randomise_heads(modular.selector)
    modular.zero_grad(set_to_none=True)
    x = torch.randn(6, 3, 32, 32)

    routing = modular.route(x, 2, noisy=True)
    loss = modular(x, routing.gates).pow(2).mean()
    loss.backward()

    for g in routing.gates:
        assert torch.equal(g.detach(), (g.detach() > 0.5).float())
        assert torch.equal(g.detach().sum(-1), torch.full((6,), 2.0))
    for head in modular.selector.heads:
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    assert modular.selector.embed[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("n", [2, 4, 7])
def test_load_balance_loss_is_one_when_uniform(n: int) -> None:
    batch = 4 * n
    probs = torch.full((batch, n), 1.0 / n)
    mask = torch.zeros(batch, n).scatter(-1, (torch.arange(batch) % n).unsqueeze(1), 1.0)

    loss = load_balance_loss([probs, probs], [mask, torch.ones(batch, n)])

    assert torch.allclose(loss, torch.tensor(1.0))


@pytest.mark.parametrize("n", [2, 4, 7])
def test_load_balance_loss_exceeds_one_when_collapsed(n: int) -> None:
    probs = torch.full((8, n), 0.1 / (n - 1))
    probs[:, 0] = 0.9
    mask = torch.zeros(8, n)
    mask[:, 0] = 1.0

    loss = load_balance_loss([probs], [mask])

    assert loss > 1.0
    assert torch.allclose(loss, torch.tensor(0.9 * n))


@pytest.mark.parametrize("k", [0, 5, -1])
def test_invalid_top_k_is_rejected(k: int) -> None:
    with pytest.raises(ValueError, match="top-k"):
        noisy_top_k(torch.zeros(2, 4), None, k, noisy=False)


def test_importance_is_a_distribution_per_layer(modular: ModularModel) -> None:
    _randomise_heads(modular.selector)
    importance = modular.importance(torch.randn(10, 3, 32, 32), batch_size=4)

    assert [len(v) for v in importance] == modular.layer_sizes
    for v in importance:
        assert abs(sum(v) - 1.0) < 1e-5
        assert min(v) >= 0.0
    assert max(max(v) for v in importance) > 1.0 / min(modular.layer_sizes)  # not uniform any more
