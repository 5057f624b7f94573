"""Quarantine: a device caught training on wrong labels is not merged for its next few uploads.

When the behaviour check (:mod:`eclm.pipelines.defences.screen`) rejects an update, the device's
sub-model as uploaded lost more than ``max_own_drop`` on its own classes, significantly: the
device trained on labels that are not its classes'. Its local weights keep that training
(``adaptation.keep_local``), and its later uploads are this cycle's *changes* on top of them:
small, normal in norm and direction, and no longer harmful enough to be caught (measured in
docs/security.md). So its next ``uploads`` uploads are refused outright, with the reason.
Quarantine is counted in uploads, not rounds (a device that is away keeps its count), and is part
of the cloud's checkpoint, so a restarted cloud keeps it. The screen's own-class loss check does
not start one: it sees a flipped device's later uploads too, and an honest device it rejects now
and then would lose two more rounds (measured in docs/security.md).

**Fresh weights** (``fresh``). A device whose upload either check on its own classes (accuracy or
loss) or the trust check (its direction against the cloud's reference update, trained on the
cloud's own data) rejected, or whose upload was refused here, is sent a *fresh* sub-model at its
next derivation: the full weights of the current version instead of a delta, replacing its local
weights, which keep what made the update harmful. Its next upload is then one cycle of training
from the cloud's weights, as its first was, instead of a small change on top of weights the
cloud cannot see. A device that follows the protocol installs them (a faulty one; an honest
device the check rejected by mistake loses its local adaptation, and nothing else); a malicious
device may ignore them, and then only the refused uploads are kept out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from eclm.modules.merge import ModuleUpdate

#: The reason prefix of the screen's behaviour (accuracy) check, what starts a quarantine.
BEHAVIOUR = "behaviour: "
#: The reason prefix of the screen's own-class loss check (fresh weights, no quarantine).
OWN_LOSS = "own-class loss: "
#: The reason prefix of the screen's trust check against the cloud's reference update (fresh
#: weights, no quarantine: like the loss check, it sees a device's later uploads itself).
TRUST = "trust: "
#: The checks whose rejection sends the device fresh weights: each compares the update with what
#: the cloud's own data says, so a rejection points at the device's training, not only its upload.
REFRESHING = (BEHAVIOUR, OWN_LOSS, TRUST)


@dataclass
class Quarantine:
    """Devices whose next uploads are refused, with how many remain.

    Attributes:
        uploads: Uploads refused after a behaviour rejection (0: quarantine off).
        fresh: Whether a rejected or refused device is sent fresh weights at its next derivation.
        remaining: Per device, uploads still to refuse.
        refresh: Devices to send fresh weights at their next derivation.
    """

    uploads: int = 2
    fresh: bool = True
    remaining: dict[str, int] = field(default_factory=dict)
    refresh: set[str] = field(default_factory=set)

    def admit(self, updates: Sequence[ModuleUpdate]) -> tuple[list[ModuleUpdate], dict[str, str]]:
        """``(kept, refused with reasons)``; each refused upload counts against its device's quarantine."""
        kept, refused = [], {}
        for u in updates:
            left = self.remaining.get(u.device_id, 0)
            if left <= 0:
                kept.append(u)
                continue
            refused[u.device_id] = (f"quarantined: an earlier update failed the behaviour check on its own classes "
                                    f"(its local weights keep what made that update harmful, e.g. wrong labels); {left - 1} more upload(s) "
                                    "refused after this one")
            if left == 1:
                del self.remaining[u.device_id]
            else:
                self.remaining[u.device_id] = left - 1
        if self.fresh:
            self.refresh |= set(refused)
        return kept, refused

    def record(self, rejected: Mapping[str, str]) -> list[str]:
        """Start the quarantine of every device rejected by the behaviour (accuracy) check, and mark
        those and the devices the own-class loss check or the trust check rejected for fresh weights.

        Returns:
            The devices quarantined.
        """
        screened = {d: why for d, why in rejected.items() if why.startswith("screen: ")}
        if self.fresh:
            self.refresh |= {d for d, why in screened.items() if any(check in why for check in REFRESHING)}
        if self.uploads <= 0:
            return []
        caught = sorted(d for d, why in screened.items() if BEHAVIOUR in why)
        self.remaining |= dict.fromkeys(caught, self.uploads)
        return caught

    def take_refresh(self, device: str) -> bool:
        """Whether ``device`` is to get fresh weights now (asked once per derivation: it is then
        cleared, and set again only by its next rejected or refused upload)."""
        if device not in self.refresh:
            return False
        self.refresh.discard(device)
        return True

    def to_meta(self) -> dict:
        """What the cloud's checkpoint keeps."""
        return {"remaining": dict(self.remaining), "refresh": sorted(self.refresh)}

    def load(self, meta: object) -> None:
        """Restore :meth:`to_meta` output (or a checkpoint's older form: the counts alone).

        Raises:
            ValueError: If ``meta`` does not map device names to non-negative counts (plus the
                device names to refresh).
        """
        self.remaining, self.refresh = {}, set()
        if meta is None:
            return
        counts, refresh = (meta.get("remaining"), meta.get("refresh", [])) if _new_form(meta) else (meta, [])
        if not isinstance(counts, Mapping) or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                                                      and v >= 0 for k, v in counts.items()):
            raise ValueError(f"quarantine must map device names to upload counts, got {meta!r}")
        if not isinstance(refresh, list) or not all(isinstance(d, str) for d in refresh):
            raise ValueError(f"quarantine refresh must list device names, got {refresh!r}")
        self.remaining = {k: v for k, v in counts.items() if v > 0}
        self.refresh = set(refresh)


def _new_form(meta: object) -> bool:
    return isinstance(meta, Mapping) and set(meta) <= {"remaining", "refresh"} and isinstance(meta.get("remaining"), Mapping)


__all__ = ["BEHAVIOUR", "OWN_LOSS", "REFRESHING", "TRUST", "Quarantine"]
