"""The platform's one typed config: clear errors naming the field, YAML loading, the CLI check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from eclm.cli import demo_config, main
from eclm.config import ConfigError, PlatformConfig


def _base(**changes) -> dict:
    cfg = {"name": "t", "data": {"source": "digits", "num_devices": 2},
           "devices": [{"name": "a"}, {"name": "b"}]}
    cfg.update(changes)
    return cfg


@pytest.mark.parametrize(
    ("raw", "field", "message"),
    [
        (_base(bogus=1), "bogus", "Extra inputs are not permitted"),
        (_base(adaptation={"epochz": 3}), "adaptation.epochz", "Extra inputs"),
        (_base(adaptation={"lr": -1}), "adaptation.lr", "greater than 0"),
        (_base(merge={"aggregator": "mean"}), "merge.aggregator", "weighted"),
        (_base(merge={"trim_fraction": 0.5}), "merge.trim_fraction", "less than 0.5"),
        (_base(merge={"screen": {"norm_multiplier": 1.0}}), "merge.screen.norm_multiplier", "greater than 1"),
        (_base(merge={"screen": {"min_cohort": 2}}), "merge.screen.min_cohort", "greater than or equal to 3"),
        (_base(merge={"screen": {"max_own_loss_rise": -0.1}}), "merge.screen.max_own_loss_rise", "greater than or equal to 0"),
        (_base(merge={"screen": {"max_relative_stable_rank": 0}}), "merge.screen.max_relative_stable_rank", "greater than 0"),
        (_base(merge={"screen": {"bogus": 1}}), "merge.screen.bogus", "Extra inputs"),
        (_base(merge={"acceptance": "vote"}), "merge.acceptance", "paired"),
        (_base(merge={"alpha": 0.7}), "merge.alpha", "less than 0.5"),
        (_base(ray={"edge_pool_size": 0}), "ray.edge_pool_size", "greater than or equal to 1"),
        (_base(ray={"edge_pool_size": 2, "pool_nodes": ["n1", "-n2"]}), "ray.pool_nodes.1", "pattern"),
        (_base(cycles=-1), "cycles", "greater than or equal to 0"),
        (_base(devices=[{"name": "a"}, {"name": "b", "memory_mb": 0}]), "devices.1.memory_mb", "greater than 0"),
        (_base(devices=[{"name": "a"}, {"name": "has space"}]), "devices.1.name", "pattern"),
        (_base(devices=[{"name": "a"}, {"name": "b", "params_fraction": 1.5}]), "devices.1.params_fraction", "1"),
        (_base(devices=[{"name": "a"}, {"name": "b", "node": "-pi"}]), "devices.1.node", "pattern"),
        (_base(backbone={"kwargs": {"pretrained": True}}), "backbone", "download"),
        (_base(tracking={"tracking_uri": "nonsense"}), "tracking.tracking_uri", ""),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_bad_field_raises_config_error_naming_it(raw, field, message):
    with pytest.raises(ConfigError) as err:
        PlatformConfig.from_dict(raw, source="my.yaml")
    text = str(err.value)
    assert text.startswith("my.yaml: invalid configuration")
    line = next((l for l in text.splitlines() if l.strip().startswith(f"{field}:")), None)
    assert line is not None, text
    assert message in line


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_base(devices=[{"name": "a"}]), "devices lists 1 devices but data.num_devices is 2"),
        (_base(devices=[{"name": "a"}, {"name": "a"}]), "device names must be unique"),
        (_base(ray={"edge_pool_size": 1}, devices=[{"name": "a", "node": "n1"}, {"name": "b"}]),
         "ray.edge_pool_size (pooled mode) cannot be combined with devices pinned to nodes"),
        (_base(ray={"pool_nodes": ["n1"]}), "ray.pool_nodes needs pooled mode (ray.edge_pool_size)"),
    ],
    ids=["count-mismatch", "duplicate-names", "pooled-and-pinned", "pool-nodes-unpooled"],
)
def test_cross_field_errors_name_the_fields(raw, message):
    with pytest.raises(ConfigError, match="invalid configuration") as err:
        PlatformConfig.from_dict(raw)
    assert message in str(err.value)


def test_every_bad_field_is_listed_at_once():
    with pytest.raises(ConfigError) as err:
        PlatformConfig.from_dict(_base(bogus=1, adaptation={"lr": 0}, seed=-3))
    text = str(err.value)
    assert all(f in text for f in ("bogus:", "adaptation.lr:", "seed:"))


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_devices_default_to_the_data_count():
    cfg = PlatformConfig.from_dict({"data": {"source": "digits", "num_devices": 3}})
    assert [d.name for d in cfg.devices] == ["edge-0", "edge-1", "edge-2"]
    assert cfg.input_size == (cfg.data.channels, cfg.data.image_size, cfg.data.image_size)


def test_json_round_trip_is_identical():
    # Actors receive the config as JSON and validate it again; nothing may change on the way.
    cfg = PlatformConfig.from_dict(_base(ray={"edge_pool_size": 2}, merge={"aggregator": "median"}))
    again = PlatformConfig.model_validate_json(cfg.model_dump_json())
    assert again == cfg


def test_from_yaml_loads_a_valid_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_base(cycles=7, adaptation={"epochs": 2})))
    cfg = PlatformConfig.from_yaml(path)
    assert cfg.cycles == 7 and cfg.adaptation.epochs == 2 and [d.name for d in cfg.devices] == ["a", "b"]


def test_from_yaml_names_the_file_and_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_base(adaptation={"batch_size": 0})))
    with pytest.raises(ConfigError) as err:
        PlatformConfig.from_yaml(path)
    assert str(path) in str(err.value) and "adaptation.batch_size" in str(err.value)


def test_from_yaml_reports_invalid_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        PlatformConfig.from_yaml(path)


def test_from_yaml_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        PlatformConfig.from_yaml(tmp_path / "nope.yaml")


@pytest.mark.parametrize("shipped", ["demo", *sorted(p.name for p in (Path(__file__).parents[2] / "configs").glob("*.yaml"))])
def test_shipped_configs_validate(shipped):
    if shipped == "demo":
        cfg = demo_config()
        assert len(cfg.devices) == cfg.data.num_devices
    else:
        PlatformConfig.from_yaml(Path(__file__).parents[2] / "configs" / shipped)


def test_cli_check_config_on_a_bad_file_exits_2_with_the_field(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_base(merge={"tolerance": -0.5})))
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"eclm: {path}: invalid configuration") and "merge.tolerance" in err


def test_cli_check_config_on_a_missing_file_exits_2(tmp_path, capsys):
    assert main(["check-config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_cli_check_config_prints_the_validated_config(tmp_path, capsys):
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(_base(cycles=4)))
    assert main(["check-config", str(path)]) == 0
    printed = PlatformConfig.model_validate_json(capsys.readouterr().out)
    assert printed.cycles == 4 and printed == PlatformConfig.from_yaml(path)


def test_cli_run_with_a_bad_config_exits_2_before_starting_ray(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_base(unknown_section={})))
    assert main(["run", "--config", str(path)]) == 2
    assert "unknown_section" in capsys.readouterr().err
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_config_cli_and_pipelines_do_not_import_ray_or_mlflow():
    modules = ["eclm.config", "eclm.cli", "eclm.pipelines.validated_merge", "eclm.pipelines.cloud_service",
               "eclm.pipelines.edge_pool", "eclm.pipelines.adaptation", "eclm.pipelines.profiler"]
    code = (f"import {', '.join(modules)}, sys; "
            "assert 'ray' not in sys.modules and 'mlflow' not in sys.modules, sorted(sys.modules)")
    root = Path(__file__).parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env={"PYTHONPATH": str(root)})


@pytest.mark.parametrize(("text", "message"), [
    ("", "the file is empty"),
    ("# only a comment\n", "the file is empty"),
    ("- name: a\n- name: b\n", "expected a mapping of settings (key: value) at the top level, got a list"),
    ("just text\n", "got a str"),
])
def test_an_empty_or_non_mapping_file_is_a_config_error_naming_it(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        PlatformConfig.from_yaml(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_resolve_paths_makes_every_path_absolute_against_the_base(tmp_path):
    cfg = PlatformConfig.from_dict({**_base(workdir="runs", data={"source": "npz", "path": "data/x.npz",
                                                                  "num_devices": 2}),
                                    "backbone": {"weights_path": "~/w.safetensors"}})
    resolved = cfg.resolve_paths(tmp_path)
    assert resolved.workdir == tmp_path / "runs" and resolved.data.path == tmp_path / "data" / "x.npz"
    assert resolved.backbone.weights_path == Path.home() / "w.safetensors" and resolved.data.root is None
    assert resolved.resolve_paths("/elsewhere") == resolved  # idempotent: absolute paths stay
    assert cfg.workdir == Path("runs")  # the original is unchanged
    assert PlatformConfig.model_validate_json(resolved.model_dump_json()) == resolved  # what actors receive
