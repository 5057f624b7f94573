"""The faster kernels swapped into backbones compute exactly what the originals do."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from eclm.modules.fast_ops import ChannelsLastMaxPool2d, use_fast_ops
from eclm.modules.modular import create_backbone


def test_backbones_get_the_channels_last_pool_with_the_same_settings() -> None:
    model = create_backbone("resnet18", num_classes=10, channels=[8, 8, 16, 16])
    assert isinstance(model.maxpool, ChannelsLastMaxPool2d)
    plain = timm.create_model("resnet18", num_classes=10, channels=[8, 8, 16, 16])
    for attr in ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"):
        assert getattr(model.maxpool, attr) == getattr(plain.maxpool, attr)
    assert isinstance(copy.deepcopy(model).maxpool, ChannelsLastMaxPool2d)
    assert not any(type(m) is nn.MaxPool2d for m in model.modules())


@pytest.mark.parametrize("train", [False, True])
def test_swapped_model_is_bit_identical_forward_and_backward(train: bool) -> None:
    torch.manual_seed(0)
    plain = timm.create_model("resnet18", num_classes=10, channels=[8, 8, 16, 16])
    fast = use_fast_ops(copy.deepcopy(plain))
    x = torch.randn(6, 3, 32, 32)
    plain.train(train), fast.train(train)
    a, b = plain(x), fast(x)
    assert torch.equal(a, b)
    if train:
        a.square().sum().backward()
        b.square().sum().backward()
        assert all(torch.equal(p.grad, q.grad) for p, q in zip(plain.parameters(), fast.parameters(), strict=True))
        assert all(torch.equal(p, q) for p, q in zip(plain.buffers(), fast.buffers(), strict=True))


def test_pool_keeps_non_image_inputs_and_returns_contiguous() -> None:
    pool = use_fast_ops(nn.Sequential(nn.MaxPool2d(2)))[0]
    x = torch.randn(2, 3, 8, 8)
    assert pool(x).is_contiguous() and torch.equal(pool(x), nn.functional.max_pool2d(x, 2))
    x3 = torch.randn(3, 8, 8)  # unbatched
    assert torch.equal(pool(x3), nn.functional.max_pool2d(x3, 2))
