"""What a user meets when something is wrong: one line naming the cause, a non-zero exit, no Ray."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import yaml

from eclm.cli import EXIT_FAILED, EXIT_USAGE, StageFailed, _fail, _Stage, devices_failing_every_cycle, main


def write(tmp_path, name: str, **changes) -> str:
    raw = {"name": "t", "data": {"source": "digits", "num_devices": 2, "classes_per_device": 3},
           "backbone": {"name": "resnet18", "kwargs": {"channels": [8, 16, 32, 64]}, "modules_per_layer": 2},
           "devices": [{"name": "phone"}, {"name": "camera"}]}
    raw.update(changes)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def errors(err: str) -> str:
    """stderr without the status line ``eclm: checking <config> ...`` that run/demo/serve print first."""
    return "".join(line for line in err.splitlines(keepends=True) if not line.startswith("eclm: checking "))


def ray_is_running() -> bool:
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


@pytest.mark.parametrize(("argv", "message"), [
    (["run", "--config", "c.yaml", "--cycles", "-1"], "argument --cycles: must be >= 0, got -1"),
    (["demo", "--cycles", "-1"], "argument --cycles: must be >= 0, got -1"),
    (["run", "--config", "c.yaml", "--cycles", "two"], "argument --cycles: expected a whole number, got 'two'"),
    (["serve", "--config", "c.yaml", "--requests", "0"], "argument --requests: must be >= 1, got 0"),
    (["serve", "--config", "c.yaml", "--cycles", "-3"], "argument --cycles: must be >= 0, got -3"),
])
def test_negative_counts_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == EXIT_USAGE and message in capsys.readouterr().err


@pytest.mark.parametrize(("changes", "expected"), [
    ({"backbone": {"name": "resnet_doesnotexist"}}, "backbone.name: 'resnet_doesnotexist' is not a timm model"),
    ({"data": {"source": "npz", "path": "missing.npz", "num_devices": 2}}, "data.path: npz file not found"),
    ({"devices": [{"name": "phone", "memory_mb": 0.05}, {"name": "camera"}]},
     "devices[0] (phone): no sub-model of resnet18 fits its budget"),
], ids=["unknown-backbone", "missing-npz", "budget-too-small"])
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_a_config_that_cannot_run_exits_2_naming_the_field_before_ray(tmp_path, capsys, changes, expected, command):
    path = write(tmp_path, "c.yaml", **changes)
    argv = ["check-config", path] if command == "check-config" else ["run", "--config", path]
    assert main(argv) == EXIT_USAGE
    raw = capsys.readouterr().err
    if command == "run":  # a first line at once, before the checks import torch
        assert raw.splitlines()[0] == f"eclm: checking {path} ..."
    err = errors(raw)
    assert err.startswith(f"eclm: {path}: the campaign cannot run:\n  {expected}")
    assert "Traceback" not in err and "error:" not in err.splitlines()[0]
    assert not ray_is_running()


def test_an_empty_config_file_is_refused(tmp_path, capsys):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert main(["run", "--config", str(path)]) == EXIT_USAGE
    assert errors(capsys.readouterr().err) == (f"eclm: {path}: the file is empty; a campaign config needs at least its data "
                                       "and devices (start from eclm/configs/demo.yaml)\n")


def test_serving_an_unknown_device_is_refused_before_anything_starts(tmp_path, capsys):
    path = write(tmp_path, "c.yaml")
    assert main(["serve", "--config", path, "--model", "phonee"]) == EXIT_USAGE
    err = errors(capsys.readouterr().err)
    assert err == ("eclm: --model 'phonee' is neither 'cloud' nor a device of this campaign "
                   "(devices: ['phone', 'camera'])\n")
    assert not ray_is_running()


def test_check_config_prints_the_config_and_what_it_found(tmp_path, capsys):
    path = write(tmp_path, "c.yaml", devices=[{"name": "phone", "params_fraction": 0.5}, {"name": "camera"}])
    assert main(["check-config", path]) == 0
    out, err = capsys.readouterr()
    assert out.lstrip().startswith("{") and '"params_fraction": 0.5' in out
    assert "eclm: backbone resnet18:" in err and "eclm: device phone: largest sub-model" in err


def test_a_failing_stage_is_one_line_with_the_root_cause(capsys):
    with pytest.raises(StageFailed) as failed, _Stage("the offline stage") as stage:
        stage.now("cycle 2/3")
        raise RuntimeError("cloud: dead: ValueError: weights in w.pt do not match\n  layer1.0.conv1: shape")
    assert _fail(failed.value, False, EXIT_FAILED, str(failed.value)) == EXIT_FAILED
    assert capsys.readouterr().err == ("eclm: cycle 2/3 failed: ValueError: weights in w.pt do not match "
                                       "layer1.0.conv1: shape (--debug shows the traceback)\n")
    _fail(failed.value, True, EXIT_FAILED, str(failed.value))
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.endswith("layer1.0.conv1: shape\n")


def test_a_device_that_fails_every_cycle_it_is_in_fails_the_campaign():
    history = [
        SimpleNamespace(devices=["phone", "camera", "hub"], failures={
            "phone": "derive: cloud: error: BudgetTooSmallError: budget params=819 is below 24042",
            "camera": "dead: ActorDiedError: killed"}),
        SimpleNamespace(devices=["phone", "camera"], failures={
            "phone": "derive: cloud: error: BudgetTooSmallError: budget params=700 is below 24042"}),
        SimpleNamespace(devices=["hub"], failures={}),
    ]
    failing = devices_failing_every_cycle(history)
    assert failing == {"phone": (2, "BudgetTooSmallError: budget params=700 is below 24042")}
    assert devices_failing_every_cycle([]) == {}


def test_the_executable_exits_with_mains_code_and_flushes_what_it_printed(tmp_path):
    """``eclm`` (``console``) ends with ``os._exit`` after main returns: nothing printed may be lost."""
    import json
    import subprocess

    good, bad = write(tmp_path, "good.yaml"), write(tmp_path, "bad.yaml", cycles=-2)
    ok = subprocess.run([sys.executable, "-m", "eclm.cli", "check-config", good], capture_output=True, text=True,
                        timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["name"] == "t"  # the whole JSON document reached the pipe
    refused = subprocess.run([sys.executable, "-m", "eclm.cli", "run", "--config", bad], capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode == EXIT_USAGE and "cycles" in errors(refused.stderr)


def test_mlflow_info_lines_are_silenced_unless_debugging_or_chosen_by_the_user(tmp_path, monkeypatch, capsys):
    path = write(tmp_path, "ok.yaml")
    monkeypatch.delenv("MLFLOW_LOGGING_LEVEL", raising=False)
    assert main(["check-config", path]) == 0
    assert __import__("os").environ["MLFLOW_LOGGING_LEVEL"] == "WARNING"
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "DEBUG")  # the user's choice wins
    assert main(["check-config", path]) == 0
    assert __import__("os").environ["MLFLOW_LOGGING_LEVEL"] == "DEBUG"
    monkeypatch.delenv("MLFLOW_LOGGING_LEVEL")
    assert main(["check-config", path, "--debug"]) == 0
    assert "MLFLOW_LOGGING_LEVEL" not in __import__("os").environ
