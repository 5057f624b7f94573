"""The robustness suite's reference without the attackers, run alone beside a protocol: a real
(tiny) campaign in which the attackers' devices are never served and every served device is clean."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from benchmarks.suites import _robustness_runs as runs


def test_the_absent_reference_runs_alone_and_serves_only_the_honest_devices(tmp_path, capsys):
    runs.main(["--mode", "smoke", "--only", "absent", "--out", str(tmp_path)])
    config = runs.RobustnessBenchConfig.for_mode("smoke")
    (k, n), = config.shares
    (record,) = json.loads((tmp_path / "runs.json").read_text())
    assert (record["attack"], record["defended"], record["share"]) == ("absent", True, f"{k} of {n}")
    assert record["attacker_rounds"] == 0 and record["honest_rounds"] == config.cycles * (n - k)
    assert len(record["val_acc"]) == config.cycles and 0.0 <= record["final_val_acc"] <= 1.0
    assert [p.stem for p in (tmp_path / "progress").glob("*.json")] == [runs.campaign_key((k, n), 0, "absent", True, False)]
    assert "1 campaign(s) written" in capsys.readouterr().out


def test_only_names_known_kinds_of_campaign():
    with pytest.raises(ValidationError, match="unknown campaign kinds"):
        runs.RobustnessBenchConfig(only=["absent", "sybil"])
    plan = runs.setting_plan(runs.RobustnessBenchConfig(only=["clean"], gateway_run=True), (1, 5))
    assert plan == [("clean", True, False), ("clean", False, False), ("clean", True, True)]
