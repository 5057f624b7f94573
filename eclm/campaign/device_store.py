"""A device's own store: what a restarted edge needs to carry on where it stopped.

Written by the device itself (on its node) after every change of its state: its adapted
sub-model, spec and version, replay buffer, drift reference, resources and data-stream position.
Large parts (weights, replay samples) are content files named by their sha256 and written once;
a small JSON snapshot per stream position refers to them::

    <device dir>/blobs/<sha256>.safetensors
    <device dir>/snap_000012.json        state at stream step 12 (rewritten within that step)

A restarted device loads its newest snapshot; a resumed campaign asks for the newest snapshot
at or before the stream step its last durable campaign step recorded, so the devices and the
cloud come back from the same point. Only the last ``keep`` snapshots are kept.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from eclm.campaign.atomic import sha256_bytes, sha256_file, write_json_atomic, write_once
from eclm.modules.exchange import pack_state, unpack_state
from eclm.modules.spec import SubModelSpec, TrainableSpec

_SNAP = re.compile(r"^snap_(\d{6})\.json$")


class DeviceSnapshot(BaseModel):
    """A device's state at one stream position (tensors live in the blobs it names)."""

    model_config = ConfigDict(extra="forbid")

    stream_step: int = Field(ge=0)
    stream: dict
    rounds: int = Field(0, ge=0)
    version: int | None = None
    lagging: tuple[tuple[int, int, int], ...] = ()
    spec: SubModelSpec | None = None
    trainable: TrainableSpec | None = None
    costs: dict | None = None
    resources: dict = Field(default_factory=dict)
    memory_overridden: bool = False
    detector: dict = Field(default_factory=dict)
    replay: dict | None = None
    weights_blob: str | None = None
    replay_blob: str | None = None


class DeviceStore:
    """The snapshots of one device (see the module docstring).

    Args:
        root: The device's directory.
        keep: Snapshots kept (older ones and blobs nothing refers to any more are removed).
    """

    def __init__(self, root: Path, keep: int = 3) -> None:
        self.root, self.keep = Path(root), keep

    def save(self, snapshot: DeviceSnapshot, weights: dict[str, Tensor] | None,
             replay: dict[str, Tensor] | None) -> None:
        """Write the blobs, then the snapshot that refers to them, then prune old snapshots."""
        update = {"weights_blob": self._blob(weights), "replay_blob": self._blob(replay)}
        snapshot = snapshot.model_copy(update=update)
        write_json_atomic(self.root / f"snap_{snapshot.stream_step:06d}.json", snapshot.model_dump(mode="json"))
        self._prune()

    def load(self, max_stream_step: int | None = None
             ) -> tuple[DeviceSnapshot, dict[str, Tensor] | None, dict[str, Tensor] | None] | None:
        """The newest intact snapshot (at or before ``max_stream_step``) with its tensors, or ``None``."""
        for step in reversed(self.steps()):
            if max_stream_step is not None and step > max_stream_step:
                continue
            try:
                snap = DeviceSnapshot.model_validate_json((self.root / f"snap_{step:06d}.json").read_text())
                return snap, self._read_blob(snap.weights_blob), self._read_blob(snap.replay_blob)
            except (OSError, ValueError):
                continue  # a damaged snapshot: fall back to an older one
        return None

    def steps(self) -> list[int]:
        found = (_SNAP.match(p.name) for p in self.root.glob("snap_*.json")) if self.root.is_dir() else ()
        return sorted(int(m.group(1)) for m in found if m)

    # ------------------------------------------------------------------ internals
    def _blob(self, tensors: dict[str, Tensor] | None) -> str | None:
        if not tensors:
            return None
        data = pack_state(tensors)
        digest = sha256_bytes(data)
        write_once(self.root / "blobs" / f"{digest}.safetensors", data)
        return digest

    def _read_blob(self, digest: str | None) -> dict[str, Tensor] | None:
        if digest is None:
            return None
        path = self.root / "blobs" / f"{digest}.safetensors"
        if sha256_file(path) != digest:
            raise ValueError(f"blob {path.name} is damaged")
        return unpack_state(path.read_bytes())[0]

    def _prune(self) -> None:
        steps = self.steps()
        for step in steps[: -self.keep]:
            (self.root / f"snap_{step:06d}.json").unlink(missing_ok=True)
        live = set()
        for step in steps[-self.keep:]:
            data = json.loads((self.root / f"snap_{step:06d}.json").read_text())
            live.update(v for v in (data.get("weights_blob"), data.get("replay_blob")) if v)
        for blob in (self.root / "blobs").glob("*.safetensors"):
            if blob.stem not in live:
                blob.unlink(missing_ok=True)


__all__ = ["DeviceSnapshot", "DeviceStore"]
