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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from eclm.modules.merge import ModuleUpdate

#: The reason prefix of the screen's behaviour (accuracy) check, what starts a quarantine.
BEHAVIOUR = "behaviour: "


@dataclass
class Quarantine:
    """Devices whose next uploads are refused, with how many remain.

    Attributes:
        uploads: Uploads refused after a behaviour rejection (0: quarantine off).
        remaining: Per device, uploads still to refuse.
    """

    uploads: int = 2
    remaining: dict[str, int] = field(default_factory=dict)

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
        return kept, refused

    def record(self, rejected: Mapping[str, str]) -> list[str]:
        """Start the quarantine of every device rejected by the behaviour check; returns them."""
        if self.uploads <= 0:
            return []
        caught = sorted(d for d, why in rejected.items() if why.startswith("screen: ") and BEHAVIOUR in why)
        self.remaining |= dict.fromkeys(caught, self.uploads)
        return caught

    def to_meta(self) -> dict[str, int]:
        """What the cloud's checkpoint keeps."""
        return dict(self.remaining)

    def load(self, meta: object) -> None:
        """Restore :meth:`to_meta` output (anything malformed restores an empty quarantine).

        Raises:
            ValueError: If ``meta`` is not a mapping of device names to non-negative counts.
        """
        if meta is None:
            self.remaining = {}
            return
        if not isinstance(meta, Mapping) or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                                                    and v >= 0 for k, v in meta.items()):
            raise ValueError(f"quarantine must map device names to upload counts, got {meta!r}")
        self.remaining = {k: v for k, v in meta.items() if v > 0}


__all__ = ["BEHAVIOUR", "Quarantine"]
