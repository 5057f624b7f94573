"""The campaign store and the device store: atomic, verified, never overwriting a run's files."""

from __future__ import annotations

import json

import pytest
import torch

from eclm.campaign.atomic import TMP_PREFIX, write_once
from eclm.campaign.device_store import DeviceSnapshot, DeviceStore
from eclm.campaign.messages import CloudSnapshot
from eclm.campaign.store import CampaignState, CampaignStore, CorruptStoreError
from eclm.config import PlatformConfig


def snap(version: int) -> CloudSnapshot:
    return CloudSnapshot(version=version, weights=f"weights of v{version}".encode())


@pytest.fixture()
def store(tmp_path):
    return CampaignStore.create(PlatformConfig(name="camp", workdir=tmp_path))


def test_every_run_gets_its_own_directory_and_never_reuses_one(tmp_path):
    cfg = PlatformConfig(name="camp", workdir=tmp_path)
    first, second = CampaignStore.create(cfg), CampaignStore.create(cfg)
    assert first.root != second.root and first.root.parent == second.root.parent
    assert CampaignStore.latest(tmp_path, "camp") is None  # neither has a commit yet
    assert first.config() == cfg


def test_commits_number_themselves_and_the_latest_verified_one_is_loaded(store):
    store.save_cloud(snap(0))
    s0 = store.save_commit(CampaignState(run_id=store.run_id))
    store.save_cloud(snap(1))
    s1 = store.save_commit(CampaignState(run_id=store.run_id, version=1, kept_versions=[0, 1], round=1))
    assert (s0.commit, s1.commit) == (0, 1) and store.commits() == [0, 1]
    state, cloud = store.load_latest()
    assert state.round == 1 and cloud.version == 1 and cloud.weights == b"weights of v1"
    assert set(cloud.kept_versions) == {0, 1} and cloud.kept_versions[0] == b"weights of v0"
    assert set(state.manifest) == {"cloud/v0000.safetensors", "cloud/v0001.safetensors"}


def test_commits_record_the_digest_each_cloud_file_was_written_with_and_read_it_once(store, monkeypatch):
    """A commit lists every kept version; the store does not read them all again for each one."""
    import hashlib

    import eclm.campaign.store as store_module

    reads = []
    real = store_module.sha256_file
    monkeypatch.setattr(store_module, "sha256_file", lambda p: reads.append(p) or real(p))
    for v in range(4):
        store.save_cloud(snap(v))
        state = store.save_commit(CampaignState(run_id=store.run_id, version=v, kept_versions=list(range(v + 1))))
    assert reads == []  # every digest came from the write
    assert state.manifest == {f"cloud/v{v:04d}.safetensors": hashlib.sha256(snap(v).weights).hexdigest()
                              for v in range(4)}
    reopened = CampaignStore(store.root)  # a resumed campaign reads each file once, then remembers it
    for _ in range(3):
        reopened.save_commit(CampaignState(run_id=store.run_id, version=3, kept_versions=[1, 2, 3]))
    assert sorted(p.name for p in reads) == ["v0001.safetensors", "v0002.safetensors", "v0003.safetensors"]


def test_a_commit_refers_only_to_cloud_files_already_durable(store):
    with pytest.raises(FileNotFoundError, match="never saved"):
        store.save_commit(CampaignState(run_id=store.run_id, version=3))
    assert store.commits() == []


def test_a_damaged_newest_commit_falls_back_to_the_one_before(store):
    store.save_cloud(snap(0))
    store.save_commit(CampaignState(run_id=store.run_id))
    store.save_cloud(snap(1))
    store.save_commit(CampaignState(run_id=store.run_id, version=1, round=1))
    (store.root / "cloud" / "v0001.safetensors").write_bytes(b"tampered")
    state, cloud = store.load_latest()
    assert state.commit == 0 and cloud.version == 0


def test_nothing_intact_is_a_clear_error(store):
    store.save_cloud(snap(0))
    store.save_commit(CampaignState(run_id=store.run_id))
    (store.root / "commits" / "commit_000000.json").write_text("{not json")
    with pytest.raises(CorruptStoreError, match="no intact commit"):
        store.load_latest()


def test_cloud_versions_are_written_once_and_never_overwritten(store):
    store.save_cloud(snap(0))
    store.save_cloud(snap(0))  # the same bytes again: harmless
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        store.save_cloud(CloudSnapshot(version=0, weights=b"another run's weights"))
    assert (store.root / "cloud" / "v0000.safetensors").read_bytes() == b"weights of v0"


def test_atomic_writes_leave_no_temporary_files(tmp_path):
    write_once(tmp_path / "a" / "file.bin", b"data")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["file.bin"]
    assert not any(p.name.startswith(TMP_PREFIX) for p in (tmp_path / "a").iterdir())


def test_commit_files_are_sorted_json_so_equal_states_give_equal_bytes(store):
    store.save_cloud(snap(0))
    store.save_commit(CampaignState(run_id=store.run_id, enrolled={"b": (1,), "a": (0,)}))
    text = (store.root / "commits" / "commit_000000.json").read_text()
    assert json.loads(text)["enrolled"] == {"a": [0], "b": [1]} and text.index('"a"') < text.index('"b"')


def _device_snapshot(step: int, version: int | None = None) -> DeviceSnapshot:
    return DeviceSnapshot(stream_step=step, stream={"step_index": step}, version=version)


def test_a_device_store_resumes_at_or_before_a_stream_step_and_prunes_old_snapshots(tmp_path):
    store = DeviceStore(tmp_path / "d0", keep=2)
    for step in (1, 2, 3):
        store.save(_device_snapshot(step, version=step), {"w": torch.full((2,), float(step))}, None)
    assert store.steps() == [2, 3]
    snap, weights, replay = store.load()
    assert snap.stream_step == 3 and torch.equal(weights["w"], torch.full((2,), 3.0)) and replay is None
    snap, weights, _ = store.load(max_stream_step=2)
    assert snap.version == 2 and torch.equal(weights["w"], torch.full((2,), 2.0))
    assert store.load(max_stream_step=1) is None
    assert len(list((tmp_path / "d0" / "blobs").iterdir())) == 2  # the step-1 weights went with it


def test_a_damaged_device_blob_falls_back_to_an_older_snapshot(tmp_path):
    store = DeviceStore(tmp_path / "d0", keep=3)
    store.save(_device_snapshot(1), {"w": torch.zeros(2)}, None)
    store.save(_device_snapshot(2), {"w": torch.ones(2)}, None)
    newest = json.loads((tmp_path / "d0" / "snap_000002.json").read_text())["weights_blob"]
    (tmp_path / "d0" / "blobs" / f"{newest}.safetensors").write_bytes(b"garbage")
    snap, weights, _ = store.load()
    assert snap.stream_step == 1 and torch.equal(weights["w"], torch.zeros(2))
