"""The robustness suite's summary: drops are paired by seed against the clean run of the same
defences, for the clean validation accuracy and for the accuracy under seen environments."""

from __future__ import annotations

import pytest

from benchmarks.suites._robustness_runs import RobustnessBenchConfig
from benchmarks.suites.robustness import summarise


def _run(attack: str, seed: int, val: float, seen: float | None, defended: bool = True, **kw) -> dict:
    return {"share": "1 of 5", "seed": seed, "attack": attack, "defended": defended, "gateway": False,
            "final_val_acc": val, "final_seen_acc": seen, "val_samples": 109, "attacker_rounds": 10,
            "attacker_excluded": kw.get("att", 10), "honest_rounds": 40, "honest_excluded": kw.get("hon", 0),
            "merge_seconds": [1.0], "merge_cpu_seconds": [kw.get("cpu", 1.0)], "val_acc": [val], "decisions": []}


def test_drops_pair_by_seed_and_seen_environments_have_their_own_column():
    runs = [_run("clean", 0, 0.95, 0.80), _run("clean", 1, 0.90, 0.70),
            _run("sign_flip", 0, 0.94, 0.79), _run("sign_flip", 1, 0.90, 0.66),
            _run("clean", 0, 0.95, 0.80, defended=False, cpu=2.0), _run("clean", 1, 0.90, 0.70, defended=False, cpu=2.0)]
    result = summarise(runs, RobustnessBenchConfig(seeds=2, attacks=["sign_flip"], shares=[(1, 5)]))
    row = next(r for r in result["rows"] if r["attack"] == "sign_flip")
    assert row["drop_pts"]["mean"] == pytest.approx(0.5)  # (1 + 0) / 2 points
    assert row["seen_drop_pts"]["mean"] == pytest.approx(2.5)  # (1 + 4) / 2 points
    worst = next(t for t in result["targets"] if t["name"] == "robustness.worst_acc_drop_pts")
    assert worst["value"] == pytest.approx(0.5)  # the target stays on the clean validation accuracy
    ratio = next(t for t in result["targets"] if t["name"] == "robustness.merge_time_ratio")
    assert ratio["value"] == pytest.approx(0.5)
    table = result["tables"][0]
    i = table["columns"].index("drop under seen environments (pts)")
    assert [r[i] for r in table["rows"] if r[0] == "sign flip"] == ["2.5 ± 1.5"]
    assert "0.92 points (109 images)" in table["notes"]


def test_runs_without_a_seen_accuracy_leave_that_column_empty():
    runs = [_run("clean", 0, 0.95, None), _run("noise", 0, 0.93, None), _run("clean", 0, 0.95, None, defended=False)]
    result = summarise(runs, RobustnessBenchConfig(seeds=1, attacks=["noise"], shares=[(1, 5)]))
    row = next(r for r in result["rows"] if r["attack"] == "noise")
    assert row["drop_pts"]["mean"] == pytest.approx(2.0) and row["seen_drop_pts"]["mean"] is None
    table = result["tables"][0]
    assert table["rows"][-1][table["columns"].index("drop under seen environments (pts)")] == "-"


def test_the_attackers_absent_run_is_a_second_reference_and_feeds_no_target():
    runs = [_run("clean", 0, 0.95, 0.80), _run("clean", 1, 0.90, 0.70),
            _run("absent", 0, 0.93, 0.80, att=0, hon=8), _run("absent", 1, 0.89, 0.70, att=0, hon=8),
            _run("sign_flip", 0, 0.93, 0.79), _run("sign_flip", 1, 0.88, 0.70),
            _run("clean", 0, 0.95, 0.80, defended=False), _run("sign_flip", 0, 0.80, 0.60, defended=False)]
    for r in runs:
        if r["attack"] == "absent":
            r["attacker_rounds"] = 0
    result = summarise(runs, RobustnessBenchConfig(seeds=2, attacks=["sign_flip"], shares=[(1, 5)]))
    rows = {(r["attack"], r["defended"]): r for r in result["rows"]}
    assert rows[("sign_flip", True)]["drop_pts"]["mean"] == pytest.approx(2.0)  # (2 + 2) / 2 vs clean
    assert rows[("sign_flip", True)]["absent_drop_pts"]["mean"] == pytest.approx(0.5)  # (0 + 1) / 2 vs absent
    assert rows[("absent", True)]["drop_pts"]["mean"] == pytest.approx(1.5)  # what the lost device is worth
    assert rows[("absent", True)]["absent_drop_pts"]["mean"] is None
    assert rows[("sign_flip", False)]["absent_drop_pts"]["mean"] is None  # the reference is defended only
    assert result["worst_drop_vs_absent_pts"]["mean"] == pytest.approx(0.5)
    targets = {t["name"]: t["value"] for t in result["targets"]}
    assert targets["robustness.worst_acc_drop_pts"] == pytest.approx(2.0)  # the absent row is no attack
    # the absent run's 8 honest exclusions per seed are not counted: only sign flip's and clean's 0
    assert targets["robustness.honest_false_exclusion_share"] == 0.0
    table = result["tables"][0]
    i = table["columns"].index("drop vs attackers absent (pts)")
    assert [r[i] for r in table["rows"] if r[0] == "sign flip" and r[2] == "on"] == ["0.5 ± 0.5"]
