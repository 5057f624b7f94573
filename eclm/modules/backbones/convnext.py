"""ConvNeXt family (timm ``ConvNeXt``): each ``ConvNeXtBlock``'s MLP is a module layer.

Module i = fc1 rows / fc2 columns of hidden group i (kind ``mlp``); the depthwise conv, norm,
fc2 bias, layer scale (gamma) and residual add are shared.
"""

from __future__ import annotations

from timm.models.convnext import ConvNeXt, ConvNeXtBlock
from torch import Tensor, nn

from eclm.modules.backbones import _mlp  # noqa: F401  (registers the "mlp" kind)
from eclm.modules.backbones._chain import ChainStage
from eclm.modules.layer import ModuleLayer, layer_kind
from eclm.modules.registry import BackboneAdapter, register_backbone


def _head(s: nn.Module, x: Tensor) -> Tensor:
    return s.head(s.norm_pre(x))


@register_backbone
class ConvNeXtAdapter(BackboneAdapter):
    family = "convnext"
    model_types = (ConvNeXt,)

    def module_layers(self, model: nn.Module, n_modules: int) -> list[ModuleLayer]:
        return [
            layer_kind("mlp").describe(f"{name}.mlp", block.mlp, n_modules)
            for name, block in model.named_modules()
            if isinstance(block, ConvNeXtBlock)
        ]

    def chain(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        stages: list[tuple[str, nn.Module]] = [("stem", model.stem)]
        for i, stage in enumerate(model.stages):
            if not isinstance(stage.downsample, nn.Identity):
                stages.append((f"stages.{i}.downsample", stage.downsample))
            stages += [(f"stages.{i}.blocks.{j}", b) for j, b in enumerate(stage.blocks)]
        stages.append(("head", ChainStage(model, ["norm_pre", "head"], _head)))
        return stages
