"""Pre-flight checks: a config that cannot run fails before Ray starts, naming the field and the fix,
and the budget check agrees with the cloud's own derivation."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eclm.config import ConfigError, PlatformConfig
from eclm.modules import BudgetTooSmallError
from eclm.preflight import describe, preflight


def config(**changes) -> PlatformConfig:
    raw = {
        "name": "pf", "data": {"source": "digits", "num_devices": 2, "classes_per_device": 3},
        "backbone": {"name": "resnet18", "kwargs": {"channels": [8, 16, 32, 64]}, "modules_per_layer": 2},
        "devices": [{"name": "a"}, {"name": "b"}],
        "adaptation": {"batch_size": 16},
    }
    for key, value in changes.items():
        section, _, field = key.partition(".")
        if field:
            raw.setdefault(section, {})[field] = value
        else:
            raw[section] = value
    return PlatformConfig.from_dict(raw)


def problems(cfg: PlatformConfig, **kwargs) -> list[str]:
    """The problem lines preflight reports (it must raise)."""
    with pytest.raises(ConfigError) as err:
        preflight(cfg, source="c.yaml", **kwargs)
    head, *lines = str(err.value).splitlines()
    assert head == "c.yaml: the campaign cannot run:"
    return [line.strip() for line in lines]


def test_a_runnable_config_passes_and_is_described():
    cfg = config(devices=[{"name": "a", "params_fraction": 0.5}, {"name": "b"}])
    report = preflight(cfg)
    assert report.num_classes == 10 and report.layers == 8
    assert 0 < report.submodels["a"] <= 0.5 * report.full_params and report.submodels["b"] is None
    text = "\n".join(describe(report, cfg))
    assert "resnet18" in text and "device a:" in text and "the full model" in text


def test_an_unknown_backbone_names_similar_timm_models():
    (line,) = problems(config(**{"backbone.name": "resnet_doesnotexist"}))
    assert line.startswith("backbone.name: 'resnet_doesnotexist' is not a timm model")
    assert "resnet18" in line and "resnet, vit" in line  # similar names, and the families eclm supports


def test_a_timm_model_of_an_unsupported_family_is_named():
    (line,) = problems(config(backbone={"name": "regnetx_002", "kwargs": {}, "modules_per_layer": 2}))
    assert line.startswith("backbone: unsupported backbone RegNet") and "resnet" in line


def test_a_wrong_timm_keyword_is_blamed_on_backbone_kwargs():
    (line,) = problems(config(**{"backbone.kwargs": {"chanels": [8, 16, 32, 64]}}))
    assert line.startswith("backbone.kwargs:") and "chanels" in line


def test_missing_files_are_named_with_their_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = config(data={"source": "npz", "path": "data/missing.npz", "num_devices": 2, "classes_per_device": 2},
                 **{"backbone.weights_path": "w.safetensors"})
    lines = problems(cfg)
    assert f"backbone.weights_path: file not found: {tmp_path / 'w.safetensors'}" in lines
    assert any(line.startswith("data.path: npz file not found") and str(tmp_path / "data" / "missing.npz") in line
               for line in lines)


def test_a_readable_npz_with_a_wrong_key_is_caught_and_a_good_one_gives_its_classes(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 255, (120, 8, 8, 3), dtype=np.uint8), y=np.arange(120) % 4)
    base = {"source": "npz", "path": str(tmp_path / "d.npz"), "num_devices": 2, "classes_per_device": 2,
            "image_size": 16, "samples_per_device": [10, 20]}
    (line,) = problems(config(data={**base, "labels_key": "labels"}))
    assert line.startswith("data.path:") and "labels_key='labels'" in line
    assert preflight(config(data=base)).num_classes == 4


def test_an_image_folder_without_its_root_is_named(tmp_path):
    cfg = config(data={"source": "image_folder", "root": str(tmp_path / "nope"), "num_devices": 2})
    (line,) = problems(cfg)
    assert line.startswith("data.root:") and "nope" in line


def _hint(line: str, resource: str) -> float:
    match = re.search(rf"raise {resource} to at least ([0-9.e+-]+)", line)
    assert match, line
    return float(match.group(1))


@pytest.mark.parametrize("resource,tiny", [("memory_mb", 0.05), ("params_fraction", 1e-4), ("bandwidth_mbps", 1e-5)])
def test_a_budget_below_the_smallest_sub_model_says_what_to_raise_and_the_hint_suffices(resource, tiny):
    (line,) = problems(config(devices=[{"name": "a", resource: tiny}, {"name": "b"}]))
    assert line.startswith("devices[0] (a): no sub-model of resnet18 fits its budget")
    needed = _hint(line, resource)
    assert preflight(config(devices=[{"name": "a", resource: needed}, {"name": "b"}])).submodels["a"] > 0
    problems(config(devices=[{"name": "a", resource: 0.98 * needed}, {"name": "b"}]))  # and it is tight


def test_preflight_and_the_cloud_agree_on_every_budget():
    from eclm.campaign.messages import DeviceSummary, Resources
    from eclm.pipelines.cloud_service import CloudService

    tiny = config(devices=[{"name": "a", "memory_mb": 0.05}, {"name": "b"}])
    needed = _hint(problems(tiny)[0], "memory_mb")
    cloud = CloudService(tiny)
    uniform = [[1.0 / n] * n for n in cloud.model.layer_sizes]
    for memory in (0.98 * needed, needed, 3 * needed):
        cfg = config(devices=[{"name": "a", "memory_mb": memory}, {"name": "b"}])
        summary = DeviceSummary(device="a", importance=uniform, resources=Resources(memory_mb=memory), num_samples=1,
                                classes=(0,))
        try:
            params = cloud.derive(summary).cost["params"]
        except BudgetTooSmallError:
            params = None
        try:
            checked = preflight(cfg).submodels["a"]
        except ConfigError:
            checked = None
        assert checked == params, memory


def test_devices_that_train_split_are_not_held_to_a_local_budget():
    report = preflight(config(devices=[{"name": "a", "memory_mb": 0.05, "mode": "split"}, {"name": "b"}]))
    assert "a" not in report.submodels and any("a: mode split" in n for n in report.notes)


def test_trigger_devices_must_exist():
    trigger = {"kind": "any", "children": [{"kind": "drift", "params": {"threshold": 0.3, "devices": ["a", "phnoe"]}},
                                           {"kind": "manual"}]}
    (line,) = problems(config(trigger=trigger))
    assert line.startswith("trigger.children[0].params.devices: ['phnoe'] are not devices") and "'b'" in line


def test_a_pinned_device_needs_a_cluster():
    cfg = config(devices=[{"name": "a"}, {"name": "b", "node": "kitchen-pi"}])
    (line,) = problems(cfg)
    assert line.startswith("devices[1].node: 'kitchen-pi'") and "eclm/node=kitchen-pi" in line
    assert preflight(cfg, address="auto").submodels == {"a": None, "b": None}


def test_a_workdir_inside_a_ray_job_package_is_flagged(tmp_path):
    job_dir = tmp_path / "runtime_resources" / "working_dir_files" / "_ray_pkg_1"
    report = preflight(config(workdir=str(job_dir)))
    assert any("temporary working_dir" in n for n in report.notes)
    assert not preflight(config(workdir=str(tmp_path))).notes


def test_preflight_does_not_import_ray():
    code = ("import sys; from eclm.config import PlatformConfig; from eclm.preflight import preflight; "
            "preflight(PlatformConfig.from_dict({'data': {'num_devices': 1}, 'backbone': {'name': 'resnet18', "
            "'kwargs': {'channels': [8, 16, 32, 64]}, 'modules_per_layer': 2}})); assert 'ray' not in sys.modules")
    root = Path(__file__).parents[2]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                            env={"PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
