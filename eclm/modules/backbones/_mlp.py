"""Layer kind for timm's ``Mlp`` / ``ConvMlp`` (ViT MLP sublayer, ConvNeXt MLP): hidden units."""

from __future__ import annotations

from timm.layers import ConvMlp, Mlp
from torch import nn

from eclm.modules._surgery import ProjectionResidual
from eclm.modules.layer import LayerKind, ModuleLayer, hidden_groups_layer, register_layer_kind


def _is_conv(mlp: nn.Module) -> bool:
    return isinstance(mlp.fc1, nn.Conv2d)


@register_layer_kind
class MlpKind(LayerKind):
    """Module i = fc1 rows of hidden group i (+ bias) and fc2 columns of group i.

    Shared: ``fc2.bias`` and everything outside the MLP (the block's norm, layer scale, residual
    add). The gate sits on ``act``'s output.
    """

    name = "mlp"

    def check(self, block: nn.Module) -> None:
        # Gated (GluMlp, SwiGLU) and GRN MLPs couple hidden units; only plain Mlp/ConvMlp split exactly.
        if type(block) not in (Mlp, ConvMlp):
            raise ValueError(f"unsupported MLP type {type(block).__name__}; only timm Mlp and ConvMlp can be split")
        norm = getattr(block, "norm", nn.Identity())
        if not isinstance(norm, nn.Identity):
            raise ValueError("Mlp with a hidden-unit norm cannot be split exactly into groups")
        if getattr(block.fc1, "groups", 1) != 1:
            raise ValueError("grouped MLP projections are not supported")

    def describe(self, name: str, block: nn.Module, n_modules: int) -> ModuleLayer:
        self.check(block)
        rows = ["fc1.weight"] + (["fc1.bias"] if block.fc1.bias is not None else [])
        return hidden_groups_layer(
            name, self.name, n_modules, True, block.fc1.weight.shape[0], rows, ["fc2.weight"],
            gate_point="act", gate_dim=1 if _is_conv(block) else -1,
        )

    def residual(self, block: nn.Module) -> nn.Module:
        return ProjectionResidual("fc2", block.fc2, 1 if _is_conv(block) else -1)
