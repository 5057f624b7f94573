"""Model versions as MLflow models, against a real MLflow store (temp SQLite + local artifacts).

A registered version loads with ``mlflow.pyfunc`` and ``mlflow.pytorch`` with pickle
deserialisation disabled and predicts what the source model predicts; the champion alias follows
the latest accepted version; identical weights are registered once per name; model bytes are kept
once (in the artifact store, the journal keeps the reference); device sub-models load the same way.
"""

from __future__ import annotations

import copy
import uuid

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from eclm.modules import SubModelSpec, modularize
from eclm.serving import ModelSource
from eclm.tracking import CHAMPION, CampaignTracker, load_model, read_journal

IMAGES = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)  # models:/ URIs below resolve against this store
    mlflow.set_registry_uri(uri)
    yield {"uri": uri, "artifacts": root / "artifacts"}
    mlflow.set_tracking_uri(previous[0])
    mlflow.set_registry_uri(previous[1])


@pytest.fixture(scope="module")
def cloud():
    return modularize("resnet18", modules_per_layer=2, num_classes=10, channels=(8, 8, 16, 16)).eval()


def new_tracker(store, tmp_path, model_name: str, **kwargs) -> CampaignTracker:
    tracker = CampaignTracker(
        store["uri"], f"exp-{model_name}", tmp_path / "runs", model_name,
        artifact_location=store["artifacts"].as_uri(), **kwargs,
    )
    tracker.start({"seed": 0}, run_name="campaign")
    return tracker


def logits(module: torch.nn.Module) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(IMAGES)).numpy()


def scaled(cloud, factor: float) -> ModelSource:
    """The cloud model with its classifier scaled (a different version, same architecture)."""
    changed = copy.deepcopy(cloud)
    with torch.no_grad():
        changed.backbone.fc.weight.mul_(factor)
    return ModelSource.from_modular(changed)


def test_a_version_loads_with_pyfunc_and_pytorch_without_unpickling(store, cloud, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    name = f"cloud-{uuid.uuid4().hex[:6]}"
    tracker = new_tracker(store, tmp_path, name)
    source = ModelSource.from_modular(cloud)

    version = tracker.log_model_version(source.payload, source.architecture(), {"val_acc": 0.8}, "v0000")
    tracker.end()

    uri, expected = f"models:/{name}/{version}", logits(cloud.extract(cloud.full_spec()))
    np.testing.assert_allclose(mlflow.pyfunc.load_model(uri).predict(IMAGES), expected, atol=1e-6)
    np.testing.assert_allclose(logits(mlflow.pytorch.load_model(uri)), expected, atol=1e-6)
    rebuilt = load_model(uri, store["uri"])
    np.testing.assert_allclose(logits(rebuilt), expected, atol=1e-6)
    assert all(p.requires_grad for p in rebuilt.parameters())  # a plain, trainable timm module
    info = mlflow.models.get_model_info(uri)
    assert set(info.flavors) == {"python_function", "pytorch"}
    assert info.signature.inputs.inputs[0].shape == (-1, 3, 32, 32)
    assert info.signature.outputs.inputs[0].shape == (-1, 10)
    assert info.saved_input_example_info["type"] == "ndarray"
    files = [a.path for a in MlflowClient().list_artifacts(tracker.run_id, "models/cloud/v0000/data/eclm")]
    assert sorted(files) == ["models/cloud/v0000/data/eclm/architecture.json",
                             "models/cloud/v0000/data/eclm/model.safetensors"]


def test_the_champion_alias_follows_the_latest_accepted_version(store, cloud, tmp_path):
    name = f"cloud-{uuid.uuid4().hex[:6]}"
    tracker = new_tracker(store, tmp_path, name, pytorch_flavor=False)
    client = MlflowClient()

    sources = [scaled(cloud, factor) for factor in (1.0, 2.0, 3.0)]

    first = tracker.log_model_version(sources[0].payload, sources[0].architecture(), {}, "v0")
    held_after_first = str(client.get_model_version_by_alias(name, CHAMPION).version)
    second = tracker.log_model_version(sources[1].payload, sources[1].architecture(), {}, "v1")
    candidate = tracker.log_model_version(sources[2].payload, sources[2].architecture(), {}, "v2", alias=None)
    tracker.end()

    assert held_after_first == first
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == second != candidate
    assert tracker.champion_uri == f"models:/{name}@champion"


def test_a_campaign_run_twice_registers_its_pretrained_version_once(store, cloud, tmp_path):
    name = f"cloud-{uuid.uuid4().hex[:6]}"
    source = ModelSource.from_modular(cloud)
    versions, trackers = [], []

    for run in range(2):  # the same campaign started again: the offline stage yields the same weights
        tracker = new_tracker(store, tmp_path / f"run{run}", name, pytorch_flavor=False)
        versions.append(tracker.log_model_version(source.payload, source.architecture(), {}, "v0000"))
        tracker.end()
        trackers.append(tracker)

    client = MlflowClient()
    assert versions == ["1", "1"]
    assert len(client.search_model_versions(f"name = '{name}'")) == 1
    assert client.list_artifacts(trackers[1].run_id, "models") == []  # nothing uploaded the second time
    stored = [r["data"] for r in read_journal(trackers[1].journal_path) if r["kind"] == "stored"]
    assert stored == [{"ref": stored[0]["ref"], "uri": f"models:/{name}/1", "registered_version": "1", "reused": True}]


def test_model_and_artifact_bytes_are_kept_once_and_the_journal_references_them(store, cloud, tmp_path):
    name = f"cloud-{uuid.uuid4().hex[:6]}"
    tracker = new_tracker(store, tmp_path, name, pytorch_flavor=False)
    source = ModelSource.from_modular(cloud)

    tracker.log_model_version(source.payload, source.architecture(), {}, "v0000", step=0)
    tracker.log_json("merge_report.json", {"accepted": True}, step=0)
    tracker.end()

    records = read_journal(tracker.journal_path)
    staged = tracker.journal_path.with_suffix("")
    assert not staged.exists() or not any(p.is_file() for p in staged.rglob("*"))
    by_id = {r["id"]: r for r in records}
    refs = {by_id[r["data"]["ref"]]["kind"]: r["data"]["uri"] for r in records if r["kind"] == "stored"}
    assert refs["model_version"] == f"models:/{name}/1"
    assert refs["artifact"].endswith(f"{tracker.run_id}/artifacts/rounds/round_000/merge_report.json")
    weights = list(store["artifacts"].joinpath(tracker.run_id).rglob("model.safetensors"))
    assert len(weights) == 1 and weights[0].read_bytes() == source.payload


def test_a_device_sub_model_registers_under_its_own_name_and_loads_the_same_way(store, cloud, tmp_path):
    name = f"cloud-{uuid.uuid4().hex[:6]}"
    tracker = new_tracker(store, tmp_path, name)
    spec = SubModelSpec(model_id=cloud.model_id, groups=[(0,) for _ in cloud.layers])
    source = ModelSource.from_modular(cloud, spec)

    version = tracker.log_device_model("phone", source.payload, source.architecture(), "round-001", step=1)
    tracker.end()

    uri = f"models:/{tracker.device_model_name('phone')}/{version}"
    expected = logits(cloud.extract(spec))
    assert tracker.device_model_name("phone") == f"{name}.phone"
    np.testing.assert_allclose(mlflow.pyfunc.load_model(uri).predict(IMAGES), expected, atol=1e-6)
    np.testing.assert_allclose(logits(mlflow.pytorch.load_model(uri)), expected, atol=1e-6)
