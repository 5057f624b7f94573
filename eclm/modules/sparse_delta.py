"""Module-sparse deltas: a change that carries only some modules of a sub-model.

A device that trained three of its modules uploads those three; a device whose sub-model has
twelve modules of which the last merge changed four downloads those four. A sparse delta names
what it carries in its header (:class:`Parts`): per module layer the modules, and for the
classifier the rows (classes); its tensors hold exactly those slices (rows of the input projection,
norm channels, columns of the output projection of each carried module; the carried rows of the
classifier) plus whole tensors outside modules that it carries. What it does not carry is *not
contributed*, which is different from "unchanged": the merge counts a device only for what it
sent (:mod:`eclm.modules.merge`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from eclm.modules._surgery import positions
from eclm.modules.exchange import MalformedPayloadError
from eclm.modules.layer import ModuleLayer
from eclm.modules.merge import is_norm_statistic, tensor_owner
from eclm.modules.spec import SubModelSpec


@dataclass(frozen=True)
class Parts:
    """What a sparse delta carries of a sub-model.

    Attributes:
        groups: Per module layer, the carried modules (a subset of the sub-model's).
        rows: Per row-sliced tensor (the classifier's), the carried rows.
    """

    groups: tuple[tuple[int, ...], ...]
    rows: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", tuple(tuple(sorted(g)) for g in self.groups))
        object.__setattr__(self, "rows", {k: tuple(sorted(v)) for k, v in self.rows.items()})

    def to_meta(self) -> dict:
        return {"groups": [list(g) for g in self.groups], "rows": {k: list(v) for k, v in self.rows.items()}}

    def as_spec(self, spec: SubModelSpec) -> SubModelSpec:
        """The carried modules as a spec of the same model (layers may be empty)."""
        return SubModelSpec(model_id=spec.model_id, groups=self.groups)

    @classmethod
    def from_meta(cls, meta: dict, spec: SubModelSpec, row_sizes: Mapping[str, int]) -> Parts | None:
        """The parts a payload header names (``None``: a dense delta carrying everything).

        Raises:
            MalformedPayloadError: If the modules are not the sub-model's or the rows are out of range.
        """
        if "groups" not in meta:
            return None
        try:
            groups = tuple(tuple(sorted({int(g) for g in layer})) for layer in meta["groups"])
            rows = {str(k): tuple(sorted({int(r) for r in v})) for k, v in (meta.get("rows") or {}).items()}
        except (TypeError, ValueError) as err:
            raise MalformedPayloadError(f"sparse delta header is malformed: {err}") from err
        if len(groups) != len(spec.groups) or any(not set(c) <= set(h) for c, h in zip(groups, spec.groups,
                                                                                         strict=True)):
            raise MalformedPayloadError(f"sparse delta carries modules {groups} outside the sub-model {spec.groups}")
        for key, r in rows.items():
            if key not in row_sizes or any(not 0 <= i < row_sizes[key] for i in r):
                raise MalformedPayloadError(f"sparse delta rows {list(r)[:4]} of {key!r} do not exist")
        return cls(groups=groups, rows=rows)


def part_index(layers: Sequence[ModuleLayer], spec: SubModelSpec, parts: Parts, key: str
               ) -> tuple[int, Tensor] | None | bool:
    """Where ``key``'s carried part sits in the sub-model's tensor: ``(dim, index)``, ``None``
    for the whole tensor, ``False`` if nothing of it is carried (a layer without carried modules)."""
    if key in parts.rows:
        return 0, torch.as_tensor(parts.rows[key], dtype=torch.long)
    owner = tensor_owner(layers, key)
    if owner is None:
        return None
    idx, rel = owner
    if not parts.groups[idx]:
        return False
    held = layers[idx].owner_within(rel, list(spec.groups[idx]))
    return layers[idx].sliced[rel][0], positions(held, parts.groups[idx])


def take(state: Mapping[str, Tensor], layers: Sequence[ModuleLayer], spec: SubModelSpec, parts: Parts,
         keys: Iterable[str]) -> dict[str, Tensor]:
    """The carried parts of ``keys`` of a sub-model ``state``."""
    out = {}
    for key in keys:
        where = part_index(layers, spec, parts, key)
        if where is False:
            continue
        out[key] = state[key] if where is None else state[key].index_select(where[0], where[1])
    return out


def put(base: Mapping[str, Tensor], carried: Mapping[str, Tensor], layers: Sequence[ModuleLayer],
        spec: SubModelSpec, parts: Parts, *, differences: set[str]) -> dict[str, Tensor]:
    """``base`` with the carried parts written in: added for ``differences``, replaced otherwise.

    A difference may come in a narrower float type; it is added in the base's precision. The
    result is a new dict; ``base`` is not modified.

    Raises:
        MalformedPayloadError: On a tensor the sub-model does not have, one of a layer without
            carried modules, or a shape or type that does not fit its part.
    """
    out = dict(base)
    for key, value in carried.items():
        if key not in base:
            raise MalformedPayloadError(f"sparse delta names a tensor the sub-model does not have: {key!r}")
        ref = base[key]
        where = part_index(layers, spec, parts, key)
        if where is False:
            raise MalformedPayloadError(f"{key}: its layer carries no module in this delta")
        shape = list(ref.shape)
        if where is not None:
            shape[where[0]] = len(where[1])
        floats_ok = value.is_floating_point() and ref.is_floating_point()
        if list(value.shape) != shape or (value.dtype != ref.dtype and not (key in differences and floats_ok)):
            raise MalformedPayloadError(f"{key}: got {tuple(value.shape)} {value.dtype}, "
                                        f"expected {tuple(shape)} {ref.dtype}")
        value = value.to(ref.dtype)
        if where is None:
            out[key] = ref.detach() + value if key in differences else value.clone()
        elif key in differences:
            out[key] = ref.detach().index_add(where[0], where[1], value)
        else:
            out[key] = ref.detach().index_copy(where[0], where[1], value)
    return out


def _slicing(layers: Sequence[ModuleLayer], spec: SubModelSpec, key: str) -> tuple[int, Tensor, int] | None:
    """``(layer, module of each index, dimension)``: how the layer's modules slice ``key`` in
    ``spec``; ``None`` for a tensor outside modules."""
    owner = tensor_owner(layers, key)
    if owner is None:
        return None
    idx, rel = owner
    return idx, layers[idx].owner_within(rel, list(spec.groups[idx])), layers[idx].sliced[rel][0]


def _rows(tensor: Tensor, dim: int) -> Tensor:
    """``tensor`` as one row per index along ``dim``."""
    return tensor.movedim(dim, 0).reshape(tensor.shape[dim], -1)


def changed_parts(new: Mapping[str, Tensor], old: Mapping[str, Tensor], layers: Sequence[ModuleLayer],
                  spec: SubModelSpec, row_keys: Sequence[str]) -> tuple[Parts, set[str]]:
    """The modules, classifier rows and whole tensors whose learned weights differ from ``old``.

    Returns:
        ``(parts, whole keys)``: the carried parts, and the tensors outside modules that changed.
    """
    changed: list[set[int]] = [set() for _ in spec.groups]
    rows: dict[str, set[int]] = {}
    whole: set[str] = set()
    for key, value in new.items():
        if not value.is_floating_point() or is_norm_statistic(key):
            continue
        diff = value != old[key]
        if key in row_keys:
            rows[key] = set(torch.nonzero(diff.reshape(diff.shape[0], -1).any(dim=1)).flatten().tolist())
            continue
        slicing = _slicing(layers, spec, key)
        if slicing is None:
            if bool(diff.any()):
                whole.add(key)
            continue
        idx, held, dim = slicing
        changed[idx] |= {int(g) for g in held[_rows(diff, dim).any(dim=1)].unique().tolist()}
    row_union = {k: tuple(sorted(v)) for k, v in rows.items() if v}
    shared_rows = tuple(sorted(set().union(*row_union.values()))) if row_union else ()
    return Parts(groups=tuple(tuple(sorted(c)) for c in changed),
                 rows={k: shared_rows for k in row_keys if shared_rows}), whole


def module_changes(new: Mapping[str, Tensor], old: Mapping[str, Tensor], layers: Sequence[ModuleLayer],
                   spec: SubModelSpec) -> dict[tuple[int, int], tuple[float, float]]:
    """Per module of ``spec`` (``(layer, module)``): the squared norm of its change from ``old`` to
    ``new`` and the squared norm of its ``old`` weights, over its slices of the learned tensors."""
    out: dict[tuple[int, int], list[float]] = {}
    for key, value in new.items():
        if not value.is_floating_point() or is_norm_statistic(key):
            continue
        slicing = _slicing(layers, spec, key)
        if slicing is None:
            continue
        idx, held, dim = slicing
        before = _rows(old[key].detach().double(), dim)
        change = (_rows(value.detach().double(), dim) - before).pow(2).sum(1)
        for g in held.unique().tolist():
            pick = held == g
            sums = out.setdefault((idx, int(g)), [0.0, 0.0])
            sums[0] += float(change[pick].sum())
            sums[1] += float(before[pick].pow(2).sum())
    return {k: (v[0], v[1]) for k, v in out.items()}


__all__ = ["Parts", "changed_parts", "module_changes", "part_index", "put", "take"]
