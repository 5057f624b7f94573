"""Vision Transformer family (timm ``VisionTransformer``).

Each transformer block gives two module layers:

* ``blocks.i.attn`` (kind ``vit_attention``): heads split into head groups; module g = the q, k
  and v rows of its heads in ``qkv`` (+ bias) and the matching columns of ``proj``. Shared:
  ``proj.bias``, the per-head q/k norms, and the block's norm1 / layer scale / residual add.
  If there are fewer heads than requested modules, the layer gets one module per head.
* ``blocks.i.mlp`` (kind ``mlp``): hidden units in groups (see ``_mlp.py``).
"""

from __future__ import annotations

import torch
from timm.layers import Attention
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from eclm.modules._surgery import ProjectionResidual, group_owner
from eclm.modules.backbones import _mlp  # noqa: F401  (registers the "mlp" kind)
from eclm.modules.backbones._chain import ChainStage, named_children_chain
from eclm.modules.layer import LayerKind, ModuleLayer, layer_kind, register_layer_kind
from eclm.modules.registry import BackboneAdapter, register_backbone


@register_layer_kind
class AttentionKind(LayerKind):
    name = "vit_attention"

    def check(self, block: nn.Module) -> None:
        if type(block) is not Attention:
            raise ValueError(f"only timm's standard Attention is supported, got {type(block).__name__}")
        if not isinstance(block.norm, nn.Identity):
            raise ValueError("attention with scale_norm cannot be split into head groups exactly")

    def describe(self, name: str, block: nn.Module, n_modules: int) -> ModuleLayer:
        self.check(block)
        n = min(n_modules, block.num_heads)
        owner = torch.repeat_interleave(group_owner(block.num_heads, n), block.head_dim)
        owner3 = torch.cat([owner, owner, owner])
        sliced: dict[str, tuple[int, Tensor]] = {"qkv.weight": (0, owner3), "proj.weight": (1, owner)}
        if block.qkv.bias is not None:
            sliced["qkv.bias"] = (0, owner3)
        if block.gate is not None:
            sliced["gate.weight"] = (0, owner)
            if block.gate.bias is not None:
                sliced["gate.bias"] = (0, owner)
        return ModuleLayer(name, self.name, n, True, sliced, "norm", -1, owner, {"head_dim": block.head_dim})

    def after_slice(self, block: nn.Module, layer: ModuleLayer, kept_gate_channels: int) -> None:
        super().after_slice(block, layer, kept_gate_channels)
        block.attn_dim = kept_gate_channels
        block.num_heads = kept_gate_channels // block.head_dim

    def residual(self, block: nn.Module) -> nn.Module:
        return ProjectionResidual("proj", block.proj, -1)


def _stem(s: nn.Module, x: Tensor) -> Tensor:
    x = s.model_type._pos_embed(s, s.patch_embed(x))
    return s.norm_pre(s.patch_drop(x))


def _head(s: nn.Module, x: Tensor) -> Tensor:
    # forward_head calls self.pool(), a VisionTransformer method the stage does not inherit.
    x = s.model_type.pool(s, s.norm(x))
    return s.head(s.head_drop(s.fc_norm(x)))


@register_backbone
class ViTAdapter(BackboneAdapter):
    family = "vit"
    model_types = (VisionTransformer,)

    def module_layers(self, model: nn.Module, n_modules: int) -> list[ModuleLayer]:
        layers = []
        for name, block in model.named_modules():
            if isinstance(block, Block):
                layers.append(layer_kind("vit_attention").describe(f"{name}.attn", block.attn, n_modules))
                layers.append(layer_kind("mlp").describe(f"{name}.mlp", block.mlp, n_modules))
        return layers

    def chain(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        stem_keys = ["patch_embed", "cls_token", "reg_token", "pos_embed", "pos_drop", "patch_drop", "norm_pre"]
        head_keys = ["norm", "attn_pool", "fc_norm", "head_drop", "head"]
        return (
            [("stem", ChainStage(model, stem_keys, _stem))]
            + named_children_chain("blocks", model.blocks)
            + [("head", ChainStage(model, head_keys, _head))]
        )
