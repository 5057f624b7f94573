"""The modular-model core: pure torch, no Ray.

Decomposes timm backbones into module layers, routes with a unified selector, measures costs,
derives per-device sub-models, and merges device updates module by module.
"""

from eclm.modules.costs import CostTable
from eclm.modules.derive import BudgetTooSmallError, derive_submodel, fits, minimal_cost, shrink_submodel
from eclm.modules.exchange import MalformedPayloadError, pack_state, unpack_state
from eclm.modules.layer import LayerKind, ModuleLayer, layer_kind, register_layer_kind
from eclm.modules.merge import (
    ModuleUpdate,
    classifier_keys,
    expected_shape,
    merge_module_updates,
    tensor_owner,
    weighted_sum,
)
from eclm.modules.modular import (
    ModularModel,
    create_backbone,
    load_local_weights,
    modularize,
    narrow,
    rebuild_submodel,
    skeleton,
)
from eclm.modules.offline import EpochMetrics, OfflineSettings, evaluate, train_offline
from eclm.modules.registry import BackboneAdapter, adapter_for, register_backbone, supported_families
from eclm.modules.selector import ModuleSelector, Routing, load_balance_loss, noisy_top_k
from eclm.modules.spec import RESOURCE_DIMS, DeviceProfile, SubModelSpec
from eclm.modules.subtasks import assign_modules, class_subtasks, target_routing

__all__ = [
    "RESOURCE_DIMS",
    "BackboneAdapter",
    "BudgetTooSmallError",
    "CostTable",
    "DeviceProfile",
    "EpochMetrics",
    "LayerKind",
    "MalformedPayloadError",
    "ModularModel",
    "ModuleLayer",
    "ModuleSelector",
    "ModuleUpdate",
    "OfflineSettings",
    "Routing",
    "SubModelSpec",
    "adapter_for",
    "assign_modules",
    "class_subtasks",
    "classifier_keys",
    "create_backbone",
    "derive_submodel",
    "evaluate",
    "expected_shape",
    "fits",
    "layer_kind",
    "load_balance_loss",
    "load_local_weights",
    "merge_module_updates",
    "minimal_cost",
    "modularize",
    "narrow",
    "noisy_top_k",
    "pack_state",
    "rebuild_submodel",
    "register_backbone",
    "register_layer_kind",
    "shrink_submodel",
    "skeleton",
    "supported_families",
    "target_routing",
    "tensor_owner",
    "train_offline",
    "unpack_state",
    "weighted_sum",
]
