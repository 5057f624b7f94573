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
"""

from __future__ import annotations

from torch import Tensor

from eclm.modules.exchange import MalformedPayloadError
from eclm.modules.merge import is_norm_statistic


def is_delta_key(key: str, tensor: Tensor) -> bool:
    """Whether ``key`` travels as a difference (learned floating-point weights)."""
    return tensor.is_floating_point() and not is_norm_statistic(key)


def state_delta(after: dict[str, Tensor], before: dict[str, Tensor], *, statistics: bool = True) -> dict[str, Tensor]:
    """``after - before`` for learned weights; other tensors absolute (or dropped).

    Args:
        after: The newer state.
        before: The older state with the same keys and shapes.
        statistics: Keep norm statistics / integer buffers as absolute values (uploads); ``False``
            leaves them out (downloads).

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
            out[key] = (value.detach() - before[key].detach()).contiguous()
        elif statistics:
            out[key] = value.detach().clone()
    return out


def apply_delta(base: dict[str, Tensor], delta: dict[str, Tensor], *, require_all: bool = True) -> dict[str, Tensor]:
    """``base + delta`` for learned weights; absolute tensors in ``delta`` replace the base's.

    The result is a new dict; ``base`` is not modified. Tensors missing from ``delta`` are kept
    from ``base`` unless ``require_all``, in which case every learned weight must be present.

    Raises:
        MalformedPayloadError: On unknown keys, missing learned weights, or a shape or dtype that
            does not match the base.
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
        if value.shape != ref.shape or value.dtype != ref.dtype:
            raise MalformedPayloadError(
                f"{key}: got {tuple(value.shape)} {value.dtype}, expected {tuple(ref.shape)} {ref.dtype}"
            )
        out[key] = ref.detach() + value if is_delta_key(key, ref) else value.clone()
    return out
