"""The modular-model core: pure torch, no Ray.

Decomposes timm backbones into module layers, routes with a unified selector, measures costs,
derives per-device sub-models, and merges device updates module by module.


Names are imported on first use (PEP 562), so importing one light submodule (for example
a config) does not pull in torch through this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eclm._lazy import lazy_exports

if TYPE_CHECKING:
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
        load_checkpoint,
        load_local_weights,
        modularize,
        narrow,
        read_local_weights,
        rebuild_submodel,
        skeleton,
    )
    from eclm.modules.offline import EpochMetrics, OfflineSettings, evaluate, train_offline
    from eclm.modules.registry import BackboneAdapter, adapter_for, register_backbone, supported_families
    from eclm.modules.selector import ModuleSelector, Routing, load_balance_loss, noisy_top_k
    from eclm.modules.spec import RESOURCE_DIMS, DeviceProfile, SubModelSpec
    from eclm.modules.subtasks import assign_modules, class_subtasks, target_routing

_EXPORTS: dict[str, tuple[str, str]] = {
    "CostTable": ("eclm.modules.costs", "CostTable"),
    "BudgetTooSmallError": ("eclm.modules.derive", "BudgetTooSmallError"),
    "derive_submodel": ("eclm.modules.derive", "derive_submodel"),
    "fits": ("eclm.modules.derive", "fits"),
    "minimal_cost": ("eclm.modules.derive", "minimal_cost"),
    "shrink_submodel": ("eclm.modules.derive", "shrink_submodel"),
    "MalformedPayloadError": ("eclm.modules.exchange", "MalformedPayloadError"),
    "pack_state": ("eclm.modules.exchange", "pack_state"),
    "unpack_state": ("eclm.modules.exchange", "unpack_state"),
    "LayerKind": ("eclm.modules.layer", "LayerKind"),
    "ModuleLayer": ("eclm.modules.layer", "ModuleLayer"),
    "layer_kind": ("eclm.modules.layer", "layer_kind"),
    "register_layer_kind": ("eclm.modules.layer", "register_layer_kind"),
    "ModuleUpdate": ("eclm.modules.merge", "ModuleUpdate"),
    "classifier_keys": ("eclm.modules.merge", "classifier_keys"),
    "expected_shape": ("eclm.modules.merge", "expected_shape"),
    "merge_module_updates": ("eclm.modules.merge", "merge_module_updates"),
    "tensor_owner": ("eclm.modules.merge", "tensor_owner"),
    "weighted_sum": ("eclm.modules.merge", "weighted_sum"),
    "ModularModel": ("eclm.modules.modular", "ModularModel"),
    "create_backbone": ("eclm.modules.modular", "create_backbone"),
    "load_checkpoint": ("eclm.modules.modular", "load_checkpoint"),
    "load_local_weights": ("eclm.modules.modular", "load_local_weights"),
    "read_local_weights": ("eclm.modules.modular", "read_local_weights"),
    "modularize": ("eclm.modules.modular", "modularize"),
    "narrow": ("eclm.modules.modular", "narrow"),
    "rebuild_submodel": ("eclm.modules.modular", "rebuild_submodel"),
    "skeleton": ("eclm.modules.modular", "skeleton"),
    "EpochMetrics": ("eclm.modules.offline", "EpochMetrics"),
    "OfflineSettings": ("eclm.modules.offline", "OfflineSettings"),
    "evaluate": ("eclm.modules.offline", "evaluate"),
    "train_offline": ("eclm.modules.offline", "train_offline"),
    "BackboneAdapter": ("eclm.modules.registry", "BackboneAdapter"),
    "adapter_for": ("eclm.modules.registry", "adapter_for"),
    "register_backbone": ("eclm.modules.registry", "register_backbone"),
    "supported_families": ("eclm.modules.registry", "supported_families"),
    "ModuleSelector": ("eclm.modules.selector", "ModuleSelector"),
    "Routing": ("eclm.modules.selector", "Routing"),
    "load_balance_loss": ("eclm.modules.selector", "load_balance_loss"),
    "noisy_top_k": ("eclm.modules.selector", "noisy_top_k"),
    "RESOURCE_DIMS": ("eclm.modules.spec", "RESOURCE_DIMS"),
    "DeviceProfile": ("eclm.modules.spec", "DeviceProfile"),
    "SubModelSpec": ("eclm.modules.spec", "SubModelSpec"),
    "assign_modules": ("eclm.modules.subtasks", "assign_modules"),
    "class_subtasks": ("eclm.modules.subtasks", "class_subtasks"),
    "target_routing": ("eclm.modules.subtasks", "target_routing"),
}

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
    "load_checkpoint",
    "load_local_weights",
    "read_local_weights",
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


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
