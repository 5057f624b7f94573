"""Re-deliveries on a spec change: the modules a device keeps travel as changes, only new ones whole.

When the cloud derives a different sub-model for a device (its resources or importance moved), the
device usually keeps most of its modules. Sending the whole new sub-model again would throw away
its local adaptation of those modules and cost a first delivery's bytes. A *respec* payload
instead carries, against the version the device holds (see docs/method.md, "Exchange"):

- for the modules both sub-models keep (the *common* modules): the cloud's change since that
  version, module-sparse and under the delta codec, exactly like a download for an unchanged
  spec (:func:`~eclm.modules.deltas.sparse_download`), together with the changed classifier rows
  and tensors outside modules;
- for the modules only the new sub-model keeps (the *fresh* modules): their weights and norm
  statistics, under the first-delivery codec, and whole any tensor outside modules the device
  cannot have (a block that was a residual module before).

The device assembles the new sub-model from its own common slices plus the change, and the fresh
parts. Every module slice is owned by one layer and sliced along one dimension, so a module's
slices do not depend on which modules other layers keep, and the assembly is exact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from eclm.modules.codec import encode
from eclm.modules.deltas import apply_wire_delta, first_delivery, sparse_download, to_float32
from eclm.modules.exchange import MalformedPayloadError
from eclm.modules.layer import ModuleLayer
from eclm.modules.merge import tensor_owner
from eclm.modules.sparse_delta import Parts, put, take
from eclm.modules.spec import SubModelSpec

FRESH_PREFIX = "fresh/"
"""Wire keys of the fresh parts (the rest of a respec payload is the common modules' change)."""


def split_spec(held: SubModelSpec, spec: SubModelSpec) -> tuple[SubModelSpec, Parts]:
    """``(common, fresh)``: the modules both specs keep, as a spec, and those only ``spec`` keeps.

    Raises:
        ValueError: If the specs are of different architectures.
    """
    if held.model_id != spec.model_id or len(held.groups) != len(spec.groups):
        raise ValueError("the held and the new sub-model are of different modular models")
    common = tuple(tuple(sorted(set(h) & set(s))) for h, s in zip(held.groups, spec.groups, strict=True))
    fresh = tuple(tuple(sorted(set(s) - set(c))) for s, c in zip(spec.groups, common, strict=True))
    return SubModelSpec(model_id=spec.model_id, groups=common), Parts(groups=fresh)


def _keys_with_part(new: Mapping[str, Tensor], old: Mapping[str, Tensor], layers: Sequence[ModuleLayer],
                    groups: tuple[tuple[int, ...], ...], *, held: bool) -> list[str]:
    """Tensors of ``new`` with a part among ``groups``: module slices of layers where ``groups``
    keeps modules, and tensors outside modules that the held sub-model ``old`` has (``held``) or
    lacks (``not held``)."""
    return [key for key in new if ((owner := tensor_owner(layers, key)) is not None and groups[owner[0]])
            or (owner is None and (key in old) == held)]


def respec_download(new: Mapping[str, Tensor], old: Mapping[str, Tensor], layers: Sequence[ModuleLayer],
                    spec: SubModelSpec, held: SubModelSpec, row_keys: Sequence[str], *, delta_dtype: str,
                    first_dtype: str) -> tuple[dict[str, Tensor], dict]:
    """The wire tensors and header of a respec payload.

    Args:
        new: The cloud's current weights of the new sub-model ``spec``.
        old: The cloud's weights of the held sub-model ``held`` at the version the device holds.
        layers: The modular model's layer metadata.
        spec: The new sub-model.
        held: The sub-model the device holds.
        row_keys: The classifier's tensors.
        delta_dtype: Codec of the common modules' change (``adaptation.delta_dtype``).
        first_dtype: Codec of the fresh parts (``adaptation.first_delivery_dtype``).

    Returns:
        ``(wire, header entries)``; the header names the held spec's groups, the fresh modules and
        the carried parts of the change (relative to the common modules, :func:`split_spec`).
    """
    common, fresh = split_spec(held, spec)
    keys = _keys_with_part(new, old, layers, common.groups, held=True)
    where = Parts(groups=common.groups)
    diffs, parts, _ = sparse_download(take(new, layers, spec, where, keys), take(old, layers, held, where, keys),
                                      layers, common, row_keys)
    wire, _ = encode(diffs, delta_dtype)
    fresh_state = take(new, layers, spec, fresh, _keys_with_part(new, old, layers, fresh.groups, held=False))
    wire |= {FRESH_PREFIX + k: v for k, v in first_delivery(fresh_state, first_dtype).items()}
    meta = {"kind": "respec", "held_groups": [list(g) for g in held.groups],
            "fresh": [list(g) for g in fresh.groups]} | parts.to_meta()
    return wire, meta


def apply_respec(held_state: Mapping[str, Tensor], held: SubModelSpec, spec: SubModelSpec,
                 wire: Mapping[str, Tensor], meta: dict, layers: Sequence[ModuleLayer], row_keys: Sequence[str],
                 template: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The new sub-model's state: the device's common slices plus the cloud's change, and the fresh parts.

    Args:
        held_state: The device's weights of ``held`` (adapted, or as received last).
        held: The sub-model the device holds.
        spec: The new sub-model.
        wire: The payload's tensors.
        meta: The payload's header.
        layers: The modular model's layer metadata.
        row_keys: The classifier's tensors.
        template: Tensors of the new sub-model's shapes and types (e.g. on the meta device).

    Raises:
        MalformedPayloadError: If the payload is for another held sub-model, does not decode, or
            leaves a tensor or slice of the new sub-model unset.
    """
    common, fresh = split_spec(held, spec)
    if meta.get("held_groups") != [list(g) for g in held.groups] or meta.get("fresh") != [list(g) for g in fresh.groups]:
        raise MalformedPayloadError("respec payload is for another held sub-model")
    change = {k: v for k, v in wire.items() if not k.startswith(FRESH_PREFIX)}
    fresh_state = to_float32({k[len(FRESH_PREFIX):]: v for k, v in wire.items() if k.startswith(FRESH_PREFIX)})
    mine = take(held_state, layers, held, Parts(groups=common.groups), list(held_state))
    mine = apply_wire_delta(mine, change, meta, layers, common, row_keys)
    _check_covered(template, mine, fresh_state, layers, common, fresh)
    out = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in template.items()}
    out = put(out, {k: v for k, v in mine.items() if k in template}, layers, spec, Parts(groups=common.groups),
              differences=set())
    return put(out, fresh_state, layers, spec, fresh, differences=set())


def _check_covered(template: Mapping[str, Tensor], mine: Mapping[str, Tensor], fresh_state: Mapping[str, Tensor],
                   layers: Sequence[ModuleLayer], common: SubModelSpec, fresh: Parts) -> None:
    for key in template:
        owner = tensor_owner(layers, key)
        if owner is None:
            ok = key in mine or key in fresh_state
        else:
            idx = owner[0]
            ok = (not common.groups[idx] or key in mine) and (not fresh.groups[idx] or key in fresh_state)
        if not ok:
            raise MalformedPayloadError(f"respec payload leaves {key!r} of the new sub-model unset")


__all__ = ["FRESH_PREFIX", "apply_respec", "respec_download", "split_spec"]
