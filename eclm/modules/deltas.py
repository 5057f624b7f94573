"""Weight deltas: what changed, instead of the weights themselves (the ``delta`` exchange).

A device that keeps its locally adapted sub-model across cycles drifts away from the cloud
version it was derived from. If it uploaded its absolute weights, every cycle's update would
carry all of its accumulated specialisation, and a cloud that has moved on in the meantime would
be pulled back. With the delta exchange:

- **up**: a device uploads only this cycle's change, ``after - before``; the cloud re-bases it on
  its *current* slices (``current + delta``) before the usual validated merge;
- **down**: a device that already holds the derived spec receives the cloud's change since the
  version it holds (``new - held``) and adds it to its own weights, so a merge reaches it without
  wiping its local adaptation.

Only learned floating-point tensors travel as differences. BatchNorm running statistics and
integer buffers are data statistics, not weights: uploads carry them as absolute values and
downloads leave them out (the device recalibrates them on its own data).

Differences may travel in a narrower floating-point type than the weights (``adaptation.delta_dtype``,
float16 by default): a change is small, so rounding it to float16 costs about 5e-4 of the change
itself, not of the weight, and halves the bytes both ways. The receiver adds it in the weights' own
precision. A tensor whose change would overflow the narrow type travels at full precision. With
``delta_dtype: int8`` differences travel quantised per output channel (:mod:`eclm.modules.codec`).

Deltas may be *module-sparse* (:mod:`eclm.modules.sparse_delta`): an upload carries only what the
device trained, a download only the modules, classifier rows and tensors that changed since the
version the device holds (and with ``min_change`` only the modules that changed by more than that
share of their weights). A delta without a ``groups`` header is dense and must carry every
learned weight.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import torch
from torch import Tensor

from eclm.modules.codec import SCALE_SUFFIX, decode, encode_one
from eclm.modules.exchange import MalformedPayloadError
from eclm.modules.layer import ModuleLayer
from eclm.modules.merge import is_norm_statistic, tensor_owner
from eclm.modules.sparse_delta import Parts, changed_parts, module_changes, put, take
from eclm.modules.spec import SubModelSpec, TrainableSpec

WIRE_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def is_delta_key(key: str, tensor: Tensor) -> bool:
    """Whether ``key`` travels as a difference (learned floating-point weights)."""
    return tensor.is_floating_point() and not is_norm_statistic(key)


def _narrow(diff: Tensor, dtype: torch.dtype | None) -> Tensor:
    """``diff`` in the wire type, or unchanged if the type is not narrower or would overflow."""
    if dtype is None or dtype == diff.dtype or torch.finfo(dtype).bits >= torch.finfo(diff.dtype).bits:
        return diff
    narrow = diff.to(dtype)
    if bool(torch.isfinite(narrow).all()) or not bool(torch.isfinite(diff).all()):
        return narrow
    return diff  # the change is too large for the narrow type: send it exactly


def state_delta(after: dict[str, Tensor], before: dict[str, Tensor], *, statistics: bool = True,
                dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """``after - before`` for learned weights; other tensors absolute (or dropped).

    Args:
        after: The newer state.
        before: The older state with the same keys and shapes.
        statistics: Keep norm statistics / integer buffers as absolute values (uploads); ``False``
            leaves them out (downloads).
        dtype: Wire type of the differences (e.g. ``torch.float16``); ``None`` keeps the weights'
            type. Absolute tensors are never narrowed.

    Raises:
        ValueError: If the two states do not have the same keys and shapes.
    """
    if set(after) != set(before):
        raise ValueError(f"states differ in keys: {sorted(set(after) ^ set(before))[:4]}")
    out: dict[str, Tensor] = {}
    for key, value in after.items():
        if value.shape != before[key].shape:
            raise ValueError(f"{key}: shape {tuple(value.shape)} vs {tuple(before[key].shape)}")
        if is_delta_key(key, value):
            out[key] = _narrow(value.detach() - before[key].detach(), dtype).contiguous()
        elif statistics:
            out[key] = value.detach().clone()
    return out


def apply_delta(base: dict[str, Tensor], delta: dict[str, Tensor], *, require_all: bool = True) -> dict[str, Tensor]:
    """``base + delta`` for learned weights; absolute tensors in ``delta`` replace the base's.

    The result is a new dict; ``base`` is not modified. Tensors missing from ``delta`` are kept
    from ``base`` unless ``require_all``, in which case every learned weight must be present.
    A difference may come in one of the narrower wire types (float16, bfloat16); it is added in
    the base's precision.

    Raises:
        MalformedPayloadError: On unknown keys, missing learned weights, or a shape or dtype that
            does not match the base (a difference: the base's type or a narrower wire type).
    """
    unknown = sorted(set(delta) - set(base))
    if unknown:
        raise MalformedPayloadError(f"delta names tensors the sub-model does not have: {unknown[:4]}")
    if require_all:
        missing = sorted(k for k, v in base.items() if is_delta_key(k, v) and k not in delta)
        if missing:
            raise MalformedPayloadError(f"delta is missing weights: {missing[:4]}")
    out = dict(base)
    for key, value in delta.items():
        ref = base[key]
        difference = is_delta_key(key, ref)
        allowed = {ref.dtype} | (_narrower_than(ref.dtype) if difference else set())
        if value.shape != ref.shape or value.dtype not in allowed:
            raise MalformedPayloadError(
                f"{key}: got {tuple(value.shape)} {value.dtype}, expected {tuple(ref.shape)} {ref.dtype}"
            )
        out[key] = ref.detach() + value.to(ref.dtype) if difference else value.clone()
    return out


def _narrower_than(dtype: torch.dtype) -> set[torch.dtype]:
    """Wire types a difference for weights of ``dtype`` may arrive in."""
    bits = torch.finfo(dtype).bits
    return {t for t in WIRE_DTYPES.values() if torch.finfo(t).bits < bits}


# ---------------------------------------------------------------------- module-sparse exchange
def learned_keys(state: Mapping[str, Tensor]) -> set[str]:
    """Keys of ``state`` that travel as differences."""
    return {k for k, v in state.items() if is_delta_key(k, v)}


def sparse_download(new: Mapping[str, Tensor], old: Mapping[str, Tensor], layers: Sequence[ModuleLayer],
                    spec: SubModelSpec, row_keys: Sequence[str], *, min_change: float = 0.0,
                    force: Collection[tuple[int, int]] = ()) -> tuple[dict[str, Tensor], Parts, tuple[tuple[int, int], ...]]:
    """The cloud's change of a sub-model between two versions, carrying only what changed.

    Only learned weights travel (statistics are the device's own); a module is carried when any of
    its slices changed, a classifier row when it changed, a tensor outside modules when it changed.
    With ``min_change`` a module is carried only when its change is larger than that fraction of its
    ``old`` weights (relative L2 norm over its slices) or it is in ``force``; the others *lag*: the
    receiver keeps its own values there (docs/method.md, "Downloads that skip small changes").

    Returns:
        ``(differences of the carried parts, parts, lagging modules)``: the modules
        (``(layer, module)``) that changed but were not carried.
    """
    parts, whole = changed_parts(new, old, layers, spec, row_keys)
    lagging: tuple[tuple[int, int], ...] = ()
    if min_change > 0:
        change = module_changes(new, old, layers, spec)
        lagging = tuple((i, m) for i, g in enumerate(parts.groups) for m in g
                        if (i, m) not in force and change[i, m][0] <= min_change ** 2 * change[i, m][1])
        parts = Parts(groups=tuple(tuple(m for m in g if (i, m) not in lagging) for i, g in enumerate(parts.groups)),
                      rows=parts.rows)
    keys = [k for k in learned_keys(new)
            if k in whole or k in parts.rows or (tensor_owner(layers, k) is not None and k not in row_keys)]
    after, before = take(new, layers, spec, parts, keys), take(old, layers, spec, parts, keys)
    return {k: after[k] - before[k] for k in after}, parts, lagging


def upload_parts(plan: TrainableSpec, row_keys: Sequence[str], classes: Sequence[int]) -> Parts:
    """What a device that trained ``plan`` uploads: its trained modules and the classifier rows of
    its ``classes`` (the merge takes a device's rows only for its classes, whatever it trained)."""
    rows = tuple(sorted(set(classes) if plan.head_rows is None else set(plan.head_rows) & set(classes)))
    return Parts(groups=plan.groups, rows={k: rows for k in row_keys})


def upload_keys(state: Mapping[str, Tensor], layers: Sequence[ModuleLayer], plan: TrainableSpec,
                row_keys: Sequence[str], *, statistics: bool) -> list[str]:
    """Tensors a device that trained ``plan`` uploads (norm statistics of those parts if asked)."""
    def carried(key: str) -> bool:
        if key in row_keys:
            return plan.head_rows is None or bool(plan.head_rows)
        owner = tensor_owner(layers, key)
        return bool(plan.groups[owner[0]]) if owner is not None else plan.shared

    return [k for k, v in state.items()
            if v.is_floating_point() and (statistics or not is_norm_statistic(k)) and carried(k)]


def _decoded(base: Mapping[str, Tensor], wire: dict[str, Tensor], meta: dict, spec: SubModelSpec,
             row_keys: Sequence[str]) -> tuple[dict[str, Tensor], Parts | None]:
    return decode(wire), Parts.from_meta(meta, spec, {k: base[k].shape[0] for k in row_keys if k in base})


def apply_wire_delta(base: dict[str, Tensor], wire: dict[str, Tensor], meta: dict, layers: Sequence[ModuleLayer],
                     spec: SubModelSpec, row_keys: Sequence[str]) -> dict[str, Tensor]:
    """``base`` plus a delta as it arrives (decoded; dense or module-sparse per its header).

    Raises:
        MalformedPayloadError: If the delta does not decode or does not fit ``base`` (a dense
            delta must carry every learned weight).
    """
    decoded, parts = _decoded(base, wire, meta, spec, row_keys)
    if parts is None:
        return apply_delta(base, decoded)
    return put(base, decoded, layers, spec, parts, differences=learned_keys(base) & set(decoded))


def rebase_upload(current: dict[str, Tensor], wire: dict[str, Tensor], meta: dict, layers: Sequence[ModuleLayer],
                  spec: SubModelSpec, row_keys: Sequence[str]) -> tuple[dict[str, Tensor], Parts | None]:
    """An uploaded delta as absolute weights on the cloud's ``current`` slices of ``spec``.

    A module-sparse upload yields only the tensors it carries: module slices restricted to the
    carried modules, the classifier whole (the rows it did not carry stay the cloud's), tensors
    outside modules whole.

    Returns:
        ``(state, parts)``; ``parts`` is ``None`` for a dense upload (every tensor of ``spec``).

    Raises:
        MalformedPayloadError: If the delta does not decode or does not fit the sub-model.
    """
    decoded, parts = _decoded(current, wire, meta, spec, row_keys)
    if parts is None:
        return apply_delta(current, decoded), None
    merged = put(current, decoded, layers, spec, parts, differences=learned_keys(current) & set(decoded))
    return take(merged, layers, spec, Parts(groups=parts.groups), decoded), parts


def first_delivery(state: Mapping[str, Tensor], dtype: str) -> dict[str, Tensor]:
    """A full sub-model for the wire: learned weights under the codec ``dtype`` (``"float16"``
    halves them, a tensor that would overflow stays float32; ``"int8"`` quantises each output
    channel of a weight matrix or kernel with its own scale, :mod:`eclm.modules.codec`, about a
    quarter of the float32 bytes), norm statistics and integer buffers exact."""
    if dtype == "float32":
        return dict(state)
    wire: dict[str, Tensor] = {}
    for k, v in state.items():
        wire |= encode_one(k, v, dtype) if is_delta_key(k, v) else {k: v}
    return wire


def to_float32(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A received state in float32 (the device computes in float32): int8 weights dequantised with
    their scales, narrow float tensors widened.

    Raises:
        MalformedPayloadError: If int8 tensors and their scales do not match (:func:`~eclm.modules.codec.decode`).
    """
    state = decode(dict(state)) if any(k.endswith(SCALE_SUFFIX) or v.dtype == torch.int8 for k, v in state.items()) \
        else state
    return {k: v.float() if v.is_floating_point() and v.dtype != torch.float32 else v for k, v in state.items()}
