"""Admission of device uploads: decode, attribute and bound every upload on its own.

Before the validated merge weighs anything, each upload is taken apart alone: its identity must
be the channel it came through (never what the payload says), its payload must decode, name the
same device and carry the spec the cloud issued (or a local shrink of it), its classes must be
ones the device enrolled with and its importance summary must have the model's shape. Any
exception while admitting one upload rejects that upload alone with its reason; the others go on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from pydantic import ValidationError
from torch import Tensor

from eclm.campaign.messages import AttributedUpdate, DeviceUpdate
from eclm.modules import ModuleUpdate, SubModelSpec, unpack_state
from eclm.modules.exchange import MalformedPayloadError
from eclm.modules.sparse_delta import Parts


@dataclass
class Admission:
    """The admitted updates (as merge inputs) and a reason for every refused one."""

    updates: list[ModuleUpdate] = field(default_factory=list)
    issued: dict[str, SubModelSpec] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)


#: ``rebase(state, spec, meta) -> (absolute state, parts)``: an upload as absolute weights on the
#: cloud's slices; ``parts`` names what a module-sparse upload carries (``None``: everything).
Rebase = Callable[[dict[str, Tensor], SubModelSpec, dict], tuple[dict[str, Tensor], Parts | None]]


def admit_one(item: AttributedUpdate, layer_sizes: Sequence[int], rebase: Rebase) -> ModuleUpdate:
    """One upload as a merge input.

    Raises:
        MalformedPayloadError: If anything about the upload is wrong (the message says what).
    """
    channel = item.channel
    # Validated again here: a message built without validation (``model_construct``, or unpickled
    # by Ray from a device's reply) must not skip the bounds on what the device claims.
    up = DeviceUpdate.model_validate(item.update.model_dump(warnings=False))
    if up.device != channel:
        raise MalformedPayloadError(f"upload names device {up.device!r} but came from {channel!r}")
    foreign = sorted(set(up.classes) - set(item.enrolled_classes))
    if foreign:
        raise MalformedPayloadError(f"claims classes {foreign} the device did not enroll with "
                                    f"({list(item.enrolled_classes)})")
    if [len(r) for r in up.importance] != list(layer_sizes):
        raise MalformedPayloadError(f"importance has shape {[len(r) for r in up.importance]}, "
                                    f"the model has {list(layer_sizes)} modules per layer")
    state, spec, meta = unpack_state(up.payload)
    if spec is None:
        raise MalformedPayloadError("payload carries no sub-model spec")
    if meta.get("device", channel) != channel:
        raise MalformedPayloadError(f"payload header names device {meta.get('device')!r}, upload came from {channel!r}")
    state, parts = rebase(state, spec, meta)
    trained = None
    if parts is not None:
        foreign_rows = sorted({r for rows in parts.rows.values() for r in rows} - set(up.classes))
        if foreign_rows:
            raise MalformedPayloadError(f"carries classifier rows {foreign_rows} of classes it does not hold")
        trained = parts.as_spec(spec)
    return ModuleUpdate(channel, spec, state, [list(r) for r in up.importance], up.num_samples, list(up.classes),
                        up.metrics.model_dump(), trained=trained)


def admit(uploads: Sequence[AttributedUpdate], layer_sizes: Sequence[int], rebase: Rebase,
          admitted: Mapping[str, ModuleUpdate] | None = None) -> Admission:
    """Admit every upload on its own (see the module docstring); duplicates of a channel are refused.

    ``admitted``: per channel, the merge input its first upload already became (the cloud admits
    uploads on arrival, on the same weights, keyed by a digest of the whole upload); it is taken
    as it is instead of decoding that upload again."""
    out = Admission()
    for item in uploads:
        channel = item.channel
        if channel in out.issued or channel in out.rejected:
            out.rejected[f"{channel} (duplicate upload)"] = "a second upload from the same device; the first was kept"
            continue
        if admitted and channel in admitted:
            out.updates.append(admitted[channel])
            out.issued[channel] = item.issued
            continue
        try:
            update = admit_one(item, layer_sizes, rebase)
        except Exception as err:  # noqa: BLE001 - one bad upload is rejected alone, whatever it raises
            out.rejected[channel] = f"malformed upload: {_one_line(err)}"
            continue
        out.updates.append(update)
        out.issued[channel] = item.issued
    return out


def _one_line(err: Exception) -> str:
    """``Type: message`` on one line (a validation error lists each bad field as ``field: problem``)."""
    if isinstance(err, ValidationError):
        fields = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'update'}: {e['msg']}" for e in err.errors())
        return f"invalid claims: {fields}"
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


__all__ = ["Admission", "admit", "admit_one"]
