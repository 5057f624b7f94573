"""MobileNetV3 / EfficientNet families: every ``InvertedResidual`` block is a module layer.

Module i = the block restricted to expanded-channel group i: ``conv_pw`` rows, ``bn1`` channels,
``conv_dw`` channels (depthwise, so exactly its own channels), ``bn2`` channels and ``conv_pwl``
columns. The gate sits on ``bn2``'s output (after its activation), before squeeze-excite.

Squeeze-excite treatment (documented choice): SE pools every expanded channel, reduces them to a
shared bottleneck and expands back to a per-channel scale, so groups interact through it. We slice
SE along the expanded axis (``conv_reduce`` columns, ``conv_expand`` rows and bias per group) and
keep its bottleneck width shared. The squeeze then sums over the *selected* groups only. Every
subset of groups is therefore an exact, genuinely narrower block (a gate of 0 on a group is the
same as removing it), and all groups together equal the original block; but module outputs are
not independent summands, and parameter/FLOP costs stay additive. Blocks without a skip
connection cannot take the residual module (their output would be a constant).
"""

from __future__ import annotations

import copy

from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
from timm.models.efficientnet import EfficientNet
from timm.models.mobilenetv3 import MobileNetV3
from torch import Tensor, nn

from eclm.modules._surgery import eval_norm_constant
from eclm.modules.backbones._chain import ChainStage
from eclm.modules.layer import LayerKind, ModuleLayer, hidden_groups_layer, layer_kind, register_layer_kind
from eclm.modules.registry import BackboneAdapter, register_backbone

_BN = ("weight", "bias", "running_mean", "running_var")


class _SkipResidual(nn.Module):
    """Residual module of an inverted residual with a skip: ``x + bn3(0)``."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.bn3 = copy.deepcopy(block.bn3)

    def forward(self, x: Tensor) -> Tensor:
        return x + eval_norm_constant(self.bn3, x)


@register_layer_kind
class InvertedResidualKind(LayerKind):
    name = "inverted_residual"

    def check(self, block: nn.Module) -> None:
        if block.conv_s2d is not None:
            raise ValueError("inverted residuals with space-to-depth stems are not supported")
        if not isinstance(block.aa, nn.Identity):
            raise ValueError("inverted residuals with anti-aliasing are not supported")
        if block.conv_dw.groups != block.conv_dw.in_channels:
            raise ValueError("inverted residual with a non-depthwise middle conv is not supported")
        for norm in (block.bn1, block.bn2):  # Group/LayerNorm/EvoNorm mix the expanded channels
            if not isinstance(norm, nn.modules.batchnorm._NormBase):
                raise ValueError(f"inverted residuals with {type(norm).__name__} norms are not supported")

    def allows_empty(self, block: nn.Module) -> bool:
        return bool(block.has_skip)

    def describe(self, name: str, block: nn.Module, n_modules: int) -> ModuleLayer:
        self.check(block)
        rows = ["conv_pw.weight", "conv_dw.weight"] + [f"bn1.{k}" for k in _BN] + [f"bn2.{k}" for k in _BN]
        cols = ["conv_pwl.weight"]
        se = block.se
        if not isinstance(se, nn.Identity):
            if not (hasattr(se, "conv_reduce") and hasattr(se, "conv_expand")):
                raise ValueError(f"unsupported squeeze-excite module {type(se).__name__}")
            cols.append("se.conv_reduce.weight")
            rows.append("se.conv_expand.weight")
            if se.conv_expand.bias is not None:
                rows.append("se.conv_expand.bias")
        return hidden_groups_layer(
            name, self.name, n_modules, self.allows_empty(block), block.conv_pw.out_channels,
            rows, cols, "bn2", 1,
        )

    def residual(self, block: nn.Module) -> nn.Module:
        if not block.has_skip:
            raise ValueError("an inverted residual without a skip connection needs at least one module")
        return _SkipResidual(block)


def _stem(s: nn.Module, x: Tensor) -> Tensor:
    return s.bn1(s.conv_stem(x))


def _head_mnv3(s: nn.Module, x: Tensor) -> Tensor:
    return s.model_type.forward_head(s, x)


def _head_effnet(s: nn.Module, x: Tensor) -> Tensor:
    return s.model_type.forward_head(s, s.bn2(s.conv_head(x)))


@register_backbone
class MobileNetAdapter(BackboneAdapter):
    family = "mobilenet"
    model_types = (MobileNetV3, EfficientNet)

    def module_layers(self, model: nn.Module, n_modules: int) -> list[ModuleLayer]:
        return [
            layer_kind("inverted_residual").describe(name, block, n_modules)
            for name, block in model.named_modules()
            if type(block) is InvertedResidual
        ]

    def chain(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        stages: list[tuple[str, nn.Module]] = [("stem", ChainStage(model, ["conv_stem", "bn1"], _stem))]
        for i, stage in enumerate(model.blocks):
            stages += [(f"blocks.{i}.{j}", b) for j, b in enumerate(stage)]
        if isinstance(model, MobileNetV3):
            head = ChainStage(model, ["global_pool", "conv_head", "norm_head", "act2", "flatten", "classifier"],
                              _head_mnv3)
        else:
            head = ChainStage(model, ["conv_head", "bn2", "global_pool", "classifier"], _head_effnet)
        stages.append(("head", head))
        return stages


__all__ = ["MobileNetAdapter", "InvertedResidualKind", "DepthwiseSeparableConv"]
