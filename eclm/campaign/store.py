"""The campaign store: what a campaign cannot lose, written atomically after every step.

One directory per campaign *run*, so nothing of an earlier run is ever overwritten::

    <workdir>/campaigns/<campaign name>/<run id>/
        config.json                 the PlatformConfig the run started with
        cloud/v0000.safetensors     every cloud version, written once (backbone.* and selector.*)
        commits/commit_000004.json  the campaign state at its 4th commit (after a step, a cycle,
                                    the offline stage), with a manifest (sha256 of every cloud
                                    file it refers to)
        devices/<device>/           each device's own store (adapted weights, replay, stream)

A commit is written only after the cloud files it refers to are durable, and it is never
rewritten; resuming reads the newest commit whose manifest verifies, so a process killed at any
point resumes from the last complete one. A cloud checkpoint loads back as a model with
``backbone.weights_path: <run>/cloud/v0002.safetensors`` or :func:`eclm.modules.load_checkpoint`.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from eclm.campaign.atomic import sha256_file, write_json_atomic, write_once
from eclm.campaign.messages import CloudSnapshot, HeldModel, Resources
from eclm.config import PlatformConfig
from eclm.modules.spec import SubModelSpec

_COMMIT = re.compile(r"^commit_(\d{6})\.json$")


class RoundRecord(BaseModel):
    """The few numbers of one round the campaign's plots and summary need after a resume."""

    model_config = ConfigDict(extra="forbid")

    round: int
    cloud_val_acc: float | None = None
    decision: str = "reject"
    acc_before: dict[str, float | None] = Field(default_factory=dict)
    acc_after: dict[str, float | None] = Field(default_factory=dict)


class CampaignState(BaseModel):
    """The coordinator's durable state after one step.

    Attributes:
        step: Data steps taken so far (0 after the offline stage).
        round: Adaptation cycles run so far.
        elapsed_s: Campaign time at this step (time triggers continue from it).
        version: Cloud version; its weights are ``cloud/v<version>.safetensors``.
        kept_versions: Older versions the cloud still ships deltas against.
        best_val_acc: Best proxy accuracy of an accepted version (the merge floor).
        issued: The spec last issued to each device.
        held: What each device holds (spec and version).
        enrolled: The classes each device reported when it first took part.
        resources: Each device's last observed resources (resource drops are measured from them).
        positions: Each device's stream step (a resumed device loads its store at or before it).
        trigger: The trigger policy's state.
        mlflow_run_id: The MLflow run the campaign logs to.
        history: Per round, the numbers of the accuracy plot.
        manifest: sha256 of every file of the run this state refers to (relative path -> hex).
    """

    model_config = ConfigDict(extra="forbid")

    run_id: str
    commit: int = Field(0, ge=0)
    step: int = Field(0, ge=0)
    round: int = Field(0, ge=0)
    elapsed_s: float = Field(0.0, ge=0)
    version: int = Field(0, ge=0)
    kept_versions: list[int] = Field(default_factory=list)
    best_val_acc: float | None = None
    issued: dict[str, SubModelSpec] = Field(default_factory=dict)
    held: dict[str, HeldModel] = Field(default_factory=dict)
    enrolled: dict[str, tuple[int, ...]] = Field(default_factory=dict)
    resources: dict[str, Resources] = Field(default_factory=dict)
    positions: dict[str, int] = Field(default_factory=dict)
    selectors: dict[str, str] = Field(default_factory=dict, description="digest of the selector each device holds")
    trigger: dict = Field(default_factory=dict)
    mlflow_run_id: str | None = None
    history: list[RoundRecord] = Field(default_factory=list)
    manifest: dict[str, str] = Field(default_factory=dict)


class CorruptStoreError(RuntimeError):
    """No commit of the run can be read back intact."""


class CampaignStore:
    """The durable files of one campaign run (see the module docstring).

    Args:
        root: The run directory ``<workdir>/campaigns/<name>/<run id>``.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        # sha256 of the cloud files this store wrote or checked (they never change once written):
        # a commit lists every kept version, and re-reading them all each time grows with
        # merge.keep_versions x the backbone's size
        self._digests: dict[Path, str] = {}

    # ------------------------------------------------------------------ opening
    @staticmethod
    def campaign_dir(workdir: Path, name: str) -> Path:
        return Path(workdir) / "campaigns" / name

    @classmethod
    def create(cls, config: PlatformConfig) -> CampaignStore:
        """Start a new run directory of campaign ``config.name`` under ``config.workdir`` (never
        reusing an existing one) and record the config it starts with."""
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
        store = cls(cls.campaign_dir(config.workdir, config.name) / run_id)
        store.root.mkdir(parents=True, exist_ok=False)
        write_once(store.root / "config.json", config.model_dump_json(indent=1).encode())
        return store

    def config(self) -> PlatformConfig:
        """The config the run started with."""
        return PlatformConfig.model_validate_json((self.root / "config.json").read_text())

    @classmethod
    def latest(cls, workdir: Path, name: str) -> CampaignStore | None:
        """The newest run of campaign ``name`` that holds at least one commit, or ``None``."""
        base = cls.campaign_dir(workdir, name)
        runs = sorted((p for p in base.iterdir() if p.is_dir()), reverse=True) if base.is_dir() else []
        for run in runs:
            if cls(run).commits():
                return cls(run)
        return None

    @property
    def run_id(self) -> str:
        return self.root.name

    def device_dir(self, device: str) -> Path:
        return self.root / "devices" / device

    def cloud_path(self, version: int) -> Path:
        return self.root / "cloud" / f"v{version:04d}.safetensors"

    # ------------------------------------------------------------------ writing
    def save_cloud(self, snapshot: CloudSnapshot) -> None:
        """Write the snapshot's version once (a later call for the same version is a no-op)."""
        path = self.cloud_path(snapshot.version)
        self._digests[path] = write_once(path, snapshot.weights)

    def save_commit(self, state: CampaignState) -> CampaignState:
        """Write ``state`` as the next commit, after checking the cloud files it refers to.

        Returns:
            The state as written (with its commit number and manifest).

        Raises:
            FileNotFoundError: If a cloud version the state refers to was never saved.
        """
        files = [self.cloud_path(v) for v in sorted({state.version, *state.kept_versions})]
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"campaign state refers to cloud versions never saved: {missing}")
        manifest = {str(p.relative_to(self.root)): self._digest(p) for p in files}
        commits = self.commits()
        state = state.model_copy(update={"manifest": manifest, "commit": (commits[-1] + 1) if commits else 0})
        text = json.dumps(state.model_dump(mode="json"), indent=1, sort_keys=True) + "\n"
        write_once(self.root / "commits" / f"commit_{state.commit:06d}.json", text.encode())
        return state

    def _digest(self, path: Path) -> str:
        """sha256 of a cloud file, read once per store (the digest it was written with, when this
        store wrote it)."""
        if path not in self._digests:
            self._digests[path] = sha256_file(path)
        return self._digests[path]

    def mark(self, name: str, value: dict) -> None:
        """A small side file (e.g. ``resumed.json``) rewritten atomically; never a step file."""
        write_json_atomic(self.root / name, value)

    # ------------------------------------------------------------------ reading
    def commits(self) -> list[int]:
        """Commits written, oldest first."""
        found = (_COMMIT.match(p.name) for p in (self.root / "commits").glob("commit_*.json"))
        return sorted(int(m.group(1)) for m in found if m)

    def load_latest(self) -> tuple[CampaignState, CloudSnapshot]:
        """The newest commit whose manifest verifies, and the cloud snapshot it refers to.

        Raises:
            CorruptStoreError: If no commit verifies (the message lists why each failed).
        """
        problems = []
        for commit in reversed(self.commits()):
            try:
                return self._load_commit(commit)
            except (OSError, ValueError) as err:
                problems.append(f"commit {commit}: {err}")
        raise CorruptStoreError(f"no intact commit in {self.root}: " + ("; ".join(problems) or "none written"))

    def _load_commit(self, commit: int) -> tuple[CampaignState, CloudSnapshot]:
        text = (self.root / "commits" / f"commit_{commit:06d}.json").read_text()
        state = CampaignState.model_validate_json(text)
        for rel, digest in state.manifest.items():
            if sha256_file(self.root / rel) != digest:
                raise ValueError(f"{rel} does not match its recorded sha256")
        kept = {v: self.cloud_path(v).read_bytes() for v in state.kept_versions}
        snapshot = CloudSnapshot(version=state.version, weights=self.cloud_path(state.version).read_bytes(),
                                 kept_versions=kept, best_val_acc=state.best_val_acc)
        return state, snapshot


class MemoryStore:
    """The same interface as :class:`CampaignStore`, kept in memory (benchmarks, tests).

    A cloud endpoint that dies is still recreated from the last commit, as long as this process
    (the coordinator's) lives.
    """

    def __init__(self, run_id: str = "in-memory") -> None:
        self.run_id = run_id
        self._cloud: dict[int, bytes] = {}
        self._commits: list[CampaignState] = []

    def device_dir(self, device: str) -> None:
        return None

    def save_cloud(self, snapshot: CloudSnapshot) -> None:
        self._cloud.setdefault(snapshot.version, snapshot.weights)

    def save_commit(self, state: CampaignState) -> CampaignState:
        state = state.model_copy(update={"commit": len(self._commits)})
        self._commits.append(state)
        for old in [v for v in self._cloud if v not in {state.version, *state.kept_versions}]:
            del self._cloud[old]
        return state

    def mark(self, name: str, value: dict) -> None:
        """Nothing to mark in memory."""

    def commits(self) -> list[int]:
        return list(range(len(self._commits)))

    def load_latest(self) -> tuple[CampaignState, CloudSnapshot]:
        if not self._commits:
            raise CorruptStoreError("nothing committed yet")
        state = self._commits[-1]
        kept = {v: self._cloud[v] for v in state.kept_versions}
        return state, CloudSnapshot(version=state.version, weights=self._cloud[state.version], kept_versions=kept,
                                    best_val_acc=state.best_val_acc)


__all__ = ["CampaignState", "CampaignStore", "CorruptStoreError", "MemoryStore", "RoundRecord"]
