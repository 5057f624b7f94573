"""ResNet family (timm ``ResNet`` with ``BasicBlock`` or ``Bottleneck``).

BasicBlock: hidden = ``conv1`` output. Module i = conv1 rows, bn1 channels and conv2 columns of
hidden group i. Shared: bn2, SE, downsample, residual add, act2. Bottleneck: hidden = ``conv2``
output (conv2 is a dense 3x3, so splitting its *input* would couple groups); module i = conv2
rows, bn2 channels, conv3 columns; conv1/bn1 before the split and bn3/SE/shortcut after it are
shared. Both sums are exact because conv2 (resp. conv3) has no bias.
"""

from __future__ import annotations

from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import Tensor, nn

from eclm.modules._surgery import eval_norm_constant
from eclm.modules.backbones._chain import ChainStage, named_children_chain
from eclm.modules.layer import LayerKind, ModuleLayer, hidden_groups_layer, layer_kind, register_layer_kind
from eclm.modules.registry import BackboneAdapter, register_backbone

_BN = ("weight", "bias", "running_mean", "running_var")


def _check_common(block: nn.Module, hidden_conv: nn.Conv2d, hidden_norm: nn.Module) -> None:
    if not isinstance(getattr(block, "aa", nn.Identity()), nn.Identity):
        raise ValueError("ResNet blocks with anti-aliasing layers are not supported")
    if hidden_conv.groups != 1:
        raise ValueError("grouped ResNet blocks (ResNeXt, cardinality > 1) are not supported")
    # Only a per-channel BatchNorm can be sliced by group; Group/LayerNorm mix hidden channels.
    if not isinstance(hidden_norm, nn.modules.batchnorm._NormBase):
        raise ValueError(f"ResNet blocks with {type(hidden_norm).__name__} on the hidden channels are not supported")


class _ResNetResidual(nn.Module):
    """Residual module of a ResNet block: ``act(se(norm(0)) + shortcut(x))``."""

    def __init__(self, block: nn.Module, norm_name: str, act_name: str) -> None:
        super().__init__()
        self.norm_name = norm_name
        self.add_module(norm_name, getattr(block, norm_name))
        self.se = block.se
        self.downsample = block.downsample
        self.add_module(act_name, getattr(block, act_name))
        self.act_name = act_name

    def forward(self, x: Tensor) -> Tensor:
        shortcut = self.downsample(x) if self.downsample is not None else x
        y = eval_norm_constant(getattr(self, self.norm_name), shortcut)
        if self.se is not None:
            y = self.se(y)
        return getattr(self, self.act_name)(y + shortcut)


@register_layer_kind
class BasicBlockKind(LayerKind):
    name = "resnet_basic"

    def check(self, block: nn.Module) -> None:
        _check_common(block, block.conv1, block.bn1)

    def describe(self, name: str, block: nn.Module, n_modules: int) -> ModuleLayer:
        self.check(block)
        rows = ["conv1.weight"] + [f"bn1.{k}" for k in _BN]
        return hidden_groups_layer(
            name, self.name, n_modules, True, block.conv1.out_channels, rows, ["conv2.weight"], "act1", 1
        )

    def residual(self, block: nn.Module) -> nn.Module:
        import copy

        return _ResNetResidual(copy.deepcopy(block), "bn2", "act2")


@register_layer_kind
class BottleneckKind(LayerKind):
    name = "resnet_bottleneck"

    def check(self, block: nn.Module) -> None:
        _check_common(block, block.conv2, block.bn2)

    def describe(self, name: str, block: nn.Module, n_modules: int) -> ModuleLayer:
        self.check(block)
        rows = ["conv2.weight"] + [f"bn2.{k}" for k in _BN]
        return hidden_groups_layer(
            name, self.name, n_modules, True, block.conv2.out_channels, rows, ["conv3.weight"], "act2", 1
        )

    def residual(self, block: nn.Module) -> nn.Module:
        import copy

        # conv1/bn1 feed only the removed groups, so the residual module drops them.
        return _ResNetResidual(copy.deepcopy(block), "bn3", "act3")


def _stem(s: nn.Module, x: Tensor) -> Tensor:
    return s.maxpool(s.act1(s.bn1(s.conv1(x))))


def _head(s: nn.Module, x: Tensor) -> Tensor:
    return s.model_type.forward_head(s, x)


@register_backbone
class ResNetAdapter(BackboneAdapter):
    family = "resnet"
    model_types = (ResNet,)

    def module_layers(self, model: nn.Module, n_modules: int) -> list[ModuleLayer]:
        layers = []
        for name, block in model.named_modules():
            if isinstance(block, BasicBlock):
                layers.append(layer_kind("resnet_basic").describe(name, block, n_modules))
            elif isinstance(block, Bottleneck):
                layers.append(layer_kind("resnet_bottleneck").describe(name, block, n_modules))
        return layers

    def chain(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        stages = [("stem", ChainStage(model, ["conv1", "bn1", "act1", "maxpool"], _stem))]
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            stages += named_children_chain(stage, getattr(model, stage))
        stages.append(("head", ChainStage(model, ["global_pool", "fc"], _head)))
        return stages
