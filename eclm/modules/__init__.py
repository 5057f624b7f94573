"""The modular-model core: pure torch, no Ray.

Decomposes timm backbones into module layers, routes with a unified selector, measures costs,
derives per-device sub-models, and merges device updates module by module.
"""

from eclm.modules.costs import CostTable
from eclm.modules.layer import LayerKind, ModuleLayer, layer_kind, register_layer_kind
from eclm.modules.modular import ModularModel, create_backbone, load_local_weights, modularize, narrow
from eclm.modules.registry import BackboneAdapter, adapter_for, register_backbone, supported_families
from eclm.modules.selector import ModuleSelector, Routing, load_balance_loss, noisy_top_k
from eclm.modules.spec import RESOURCE_DIMS, DeviceProfile, SubModelSpec

__all__ = [
    "RESOURCE_DIMS",
    "BackboneAdapter",
    "CostTable",
    "DeviceProfile",
    "LayerKind",
    "ModularModel",
    "ModuleLayer",
    "ModuleSelector",
    "Routing",
    "SubModelSpec",
    "adapter_for",
    "create_backbone",
    "layer_kind",
    "load_balance_loss",
    "load_local_weights",
    "modularize",
    "narrow",
    "noisy_top_k",
    "register_backbone",
    "register_layer_kind",
    "supported_families",
]
