"""Backbone registry: one adapter per timm family, registered by decorator, found by one factory.

Adding a family is one new file in ``eclm/modules/backbones/`` with a ``@register_backbone``
class (timm's ``register_model`` / ``create_model`` pattern).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import nn

from eclm.modules.layer import ModuleLayer


class BackboneAdapter(ABC):
    """Knows which blocks of a timm family become module layers and how the model chains.

    Attributes:
        family: Registered family name (e.g. ``"resnet"``).
        model_types: timm model classes this adapter handles.
    """

    family: str = ""
    model_types: tuple[type[nn.Module], ...] = ()

    @abstractmethod
    def module_layers(self, model: nn.Module, n_modules: int) -> list[ModuleLayer]:
        """Describe every decomposable block of ``model`` in forward order."""

    @abstractmethod
    def chain(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """Split ``model`` into a chain of named stages whose composition equals ``model(x)``.

        Used by split learning and partitioned inference to run contiguous block ranges.
        The returned stages share parameters with ``model``.
        """


_ADAPTERS: dict[str, BackboneAdapter] = {}


def register_backbone(cls: type[BackboneAdapter]) -> type[BackboneAdapter]:
    """Class decorator that registers a :class:`BackboneAdapter` under ``cls.family``."""
    if not cls.family or not cls.model_types:
        raise ValueError(f"{cls.__name__} must define `family` and `model_types`")
    _ADAPTERS[cls.family] = cls()
    return cls


def supported_families() -> list[str]:
    """Names of the registered backbone families."""
    _load_builtin()
    return sorted(_ADAPTERS)


def adapter_for(model: nn.Module) -> BackboneAdapter:
    """Find the adapter for a timm model instance.

    Raises:
        ValueError: If no registered family handles ``type(model)``; the message names the
            supported families.
    """
    _load_builtin()
    for adapter in _ADAPTERS.values():
        if isinstance(model, adapter.model_types):
            return adapter
    raise ValueError(
        f"unsupported backbone {type(model).__name__}; supported timm families: "
        f"{', '.join(supported_families())}"
    )


def _load_builtin() -> None:
    # Importing the package registers the built-in families (resnet, vit, convnext, mobilenet).
    import eclm.modules.backbones  # noqa: F401
