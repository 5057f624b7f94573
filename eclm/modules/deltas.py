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
precision. A tensor whose change would overflow the narrow type travels at full precision.
"""

from __future__ import annotations

import torch
from torch import Tensor

from eclm.modules.exchange import MalformedPayloadError
from eclm.modules.merge import is_norm_statistic

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
