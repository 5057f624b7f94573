"""Module layers: a backbone block split into substitute modules that share its tail.

A :class:`ModuleLayer` is pure metadata (names, owner maps): it says which indices of which
tensors of a block belong to which module. The behaviour specific to a block type (where the
hidden channels live, what the shared "residual" computation is) lives in a :class:`LayerKind`
strategy, one per timm block family, registered by name so a device can recreate it from the
kind's name alone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from eclm.modules._surgery import (
    group_owner,
    positions,
    refresh_shape_attributes,
    slice_tensor_,
)


@dataclass
class ModuleLayer:
    """Metadata of one module layer.

    Attributes:
        name: Dotted path of the block inside the backbone (e.g. ``"layer2.0"``).
        kind: Registered :class:`LayerKind` name.
        n_modules: Number of substitute modules N (hidden-width groups).
        allows_empty: Whether the residual module (no group selected) is valid; false for blocks
            without a shortcut, whose output would no longer depend on their input.
        sliced: ``{tensor key relative to the block: (dim, owner)}``; ``owner[j]`` is the group
            owning index ``j`` along ``dim`` of the *full* block's tensor.
        gate_point: Relative path of the submodule whose output carries the hidden channels.
        gate_dim: Channel axis of that output.
        gate_owner: Owner group of each channel at the gate point.
    """

    name: str
    kind: str
    n_modules: int
    allows_empty: bool
    sliced: dict[str, tuple[int, Tensor]]
    gate_point: str
    gate_dim: int
    gate_owner: Tensor
    extra: dict = field(default_factory=dict)

    def owner_within(self, key: str, held: list[int]) -> Tensor:
        """Owner map of ``key`` restricted to the indices a block holding ``held`` groups keeps."""
        dim, owner = self.sliced[key]
        return owner[positions(owner, held)]

    def module_sizes(self) -> list[int]:
        """Hidden channels at the gate point owned by each module."""
        return torch.bincount(self.gate_owner, minlength=self.n_modules).tolist()


class LayerKind(ABC):
    """How one timm block type becomes a module layer (a strategy, one per block type)."""

    name: str = ""

    @abstractmethod
    def check(self, block: nn.Module) -> None:
        """Raise ``ValueError`` if this block variant cannot be decomposed exactly."""

    @abstractmethod
    def describe(self, name: str, block: nn.Module, n_modules: int) -> ModuleLayer:
        """Build the layer metadata for ``block`` split into ``n_modules`` groups."""

    @abstractmethod
    def residual(self, block: nn.Module) -> nn.Module:
        """The block with no hidden group: the shared computation only."""

    def allows_empty(self, block: nn.Module) -> bool:
        return True

    def after_slice(self, block: nn.Module, layer: ModuleLayer, kept_gate_channels: int) -> None:
        """Fix attributes that the forward reads after tensors were sliced."""
        refresh_shape_attributes(block)

    def slice(self, block: nn.Module, layer: ModuleLayer, held: list[int], keep: list[int], *,
              in_place: bool = False) -> nn.Module:
        """Return ``block`` (currently holding groups ``held``) narrowed to groups ``keep``.

        Args:
            block: A block holding exactly the groups ``held`` (all groups for the cloud model).
            layer: The layer's metadata.
            held: Groups the block currently holds.
            keep: Groups to keep; must be a subset of ``held``. Empty selects the residual module.
            in_place: Narrow ``block`` itself instead of a copy (for a block nobody else uses:
                a deep copy of a block costs more than slicing it).

        Returns:
            A new module, or ``block`` narrowed with ``in_place`` (else ``block`` is left untouched).

        Raises:
            ValueError: If ``keep`` is not a subset of ``held`` or empty where not allowed.
        """
        import copy

        keep = sorted(set(keep))
        if not set(keep) <= set(held):
            raise ValueError(f"layer {layer.name}: cannot keep groups {keep} from held groups {held}")
        if not keep:
            if not layer.allows_empty:
                raise ValueError(f"layer {layer.name} has no shortcut; it needs at least one module")
            return self.residual(block)
        new = block if in_place else copy.deepcopy(block)
        for key, (dim, full_owner) in layer.sliced.items():
            current_owner = full_owner[positions(full_owner, held)]
            slice_tensor_(new, key, dim, positions(current_owner, keep))
        kept = int(torch.isin(layer.gate_owner, torch.tensor(keep)).sum())
        self.after_slice(new, layer, kept)
        return new


_KINDS: dict[str, LayerKind] = {}


def register_layer_kind(kind: type[LayerKind]) -> type[LayerKind]:
    """Class decorator registering a :class:`LayerKind` under its ``name``."""
    if not kind.name:
        raise ValueError(f"{kind.__name__} must set a non-empty `name`")
    _KINDS[kind.name] = kind()
    return kind


def layer_kind(name: str) -> LayerKind:
    """Look up a registered layer kind by name."""
    try:
        return _KINDS[name]
    except KeyError:
        raise ValueError(f"unknown layer kind {name!r}; registered: {sorted(_KINDS)}") from None


def hidden_groups_layer(
    name: str,
    kind: str,
    n_modules: int,
    allows_empty: bool,
    hidden: int,
    rows: list[str],
    cols: list[str],
    gate_point: str,
    gate_dim: int,
) -> ModuleLayer:
    """Metadata for the common case: ``rows`` tensors are sliced on dim 0, ``cols`` on dim 1,
    all over the same ``hidden`` channels split into contiguous groups."""
    n = min(n_modules, hidden)
    owner = group_owner(hidden, n)
    sliced = {k: (0, owner) for k in rows} | {k: (1, owner) for k in cols}
    return ModuleLayer(name, kind, n, allows_empty, sliced, gate_point, gate_dim, owner)
