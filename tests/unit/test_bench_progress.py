"""Kept benchmark progress: finished campaigns are read back on the same settings and code, never
on other ones, and a resumed robustness setting runs only what is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import progress as prog
from benchmarks import registry
from benchmarks.progress import PROGRESS_DIR, Progress
from benchmarks.run import run_suites
from benchmarks.suites import _robustness_runs as runs
from benchmarks.suites._robustness_runs import RobustnessBenchConfig


def _tree(root: Path, code: str = "x = 1\n") -> Path:
    for package in ("eclm", "benchmarks"):
        (root / package).mkdir(parents=True, exist_ok=True)
    (root / "eclm" / "core.py").write_text(code)
    (root / "benchmarks" / "suite.py").write_text("y = 2\n")
    return root


def test_put_then_get_gives_the_record_as_json_with_its_commit(tmp_path):
    p = Progress(tmp_path / "p")
    assert p.get("a") is None and p.keys() == []
    back = p.put("a", {"share": (1, 5), "val": [0.5]}, commit="abc1234")
    assert back == {"share": [1, 5], "val": [0.5], "progress_commit": "abc1234"}
    assert Progress(tmp_path / "p").get("a") == back  # another process's view of the same directory
    assert p.keys() == ["a"]


def test_unreadable_parts_count_as_missing_and_bad_keys_or_data_are_refused(tmp_path):
    p = Progress(tmp_path)
    (tmp_path / "torn.json").write_text('{"half": ')
    (tmp_path / "list.json").write_text("[1, 2]")
    assert p.get("torn") is None and p.get("list") is None
    with pytest.raises(ValueError, match="progress key"):
        p.put("../escape", {})
    with pytest.raises(TypeError):
        p.put("obj", {"x": object()})
    assert not (tmp_path / "obj.json").exists()


def test_fingerprint_follows_settings_and_code_but_not_docs(tmp_path):
    root = _tree(tmp_path / "repo")
    first = prog.fingerprint("cfg", root)
    assert prog.fingerprint("cfg", root) == first
    assert prog.fingerprint("other cfg", root) != first
    (root / "docs").mkdir()
    (root / "docs" / "x.md").write_text("words")
    (root / "benchmarks" / "results").mkdir()
    (root / "benchmarks" / "results" / "r.py").write_text("z = 3\n")  # results are not code
    assert prog.fingerprint("cfg", root) == first
    _tree(root, code="x = 2\n")  # an uncommitted code edit
    assert prog.fingerprint("cfg", root) != first


def test_open_deletes_other_fingerprints_and_keeps_its_own(tmp_path):
    root, out = _tree(tmp_path / "repo"), tmp_path / "out"
    old = Progress.open(out, "suite", "cfg", root)
    old.put("done", {"v": 1})
    assert Progress.open(out, "suite", "cfg", root).get("done") == {"v": 1, "progress_commit": "unknown"}
    new = Progress.open(out, "suite", "changed cfg", root)
    assert new.get("done") is None and not old.directory.exists()
    assert prog.clear(out, "suite") and not (out / PROGRESS_DIR / "suite").exists()
    assert not prog.clear(out, "suite")


def _fake_campaigns(monkeypatch):
    """run_campaign and the cloud's pretraining replaced by counters (the real ones take minutes)."""
    calls = {"campaigns": [], "pretrain": 0}

    class Cloud:
        def __init__(self, config):
            pass

        def pretrain(self):
            calls["pretrain"] += 1

        def snapshot(self):
            return "snapshot"

    def campaign(config, pretrained, attack, attackers, cycles, seed, gateway=False):
        assert pretrained == "snapshot"
        calls["campaigns"].append((attack, gateway))
        return {"attack": attack, "gateway": gateway, "final_val_acc": 0.9, "attacker_excluded": len(attackers),
                "attacker_rounds": len(attackers), "honest_excluded": 0, "honest_rounds": 4,
                "merge_seconds": [1.0], "merge_cpu_seconds": [1.0]}

    monkeypatch.setattr(runs, "CloudService", Cloud)
    monkeypatch.setattr(runs, "run_campaign", campaign)
    monkeypatch.setattr(runs, "git_commit", lambda root: "c0ffee1")
    return calls


def test_a_resumed_setting_runs_only_the_missing_campaigns(tmp_path, monkeypatch):
    calls = _fake_campaigns(monkeypatch)
    config = RobustnessBenchConfig.for_mode("smoke").model_copy(update={"attacks": ["sign_flip", "noise"],
                                                                          "undefended_attacks": True})
    plan = runs.setting_plan(config, (1, 3))
    progress = Progress(tmp_path)
    first = runs.run_setting(config, (1, 3), 0, progress)
    assert len(first) == len(plan) == 8 and calls["pretrain"] == 1
    assert sorted(progress.keys()) == sorted(runs.campaign_key((1, 3), 0, *p) for p in plan)
    assert all(r["progress_commit"] == "c0ffee1" and r["share"] == "1 of 3" for r in first)

    calls["campaigns"].clear()
    assert runs.run_setting(config, (1, 3), 0, progress) == first
    assert calls["campaigns"] == [] and calls["pretrain"] == 1  # nothing run, no cloud pretrained

    (tmp_path / f"{runs.campaign_key((1, 3), 0, 'noise', False, False)}.json").unlink()
    again = runs.run_setting(config, (1, 3), 0, progress)
    assert calls["campaigns"] == [("noise", False)] and calls["pretrain"] == 2
    assert [(r["attack"], r["defended"]) for r in again] == [(r["attack"], r["defended"]) for r in first]


def test_collusion_is_planned_only_with_two_attackers():
    config = RobustnessBenchConfig(attacks=["collude", "noise"], gateway_run=True)
    assert ("collude", True, False) not in runs.setting_plan(config, (1, 5))
    assert runs.setting_plan(config, (3, 20)) == [
        ("clean", True, False), ("clean", False, False), ("absent", True, False), ("collude", True, False),
        ("noise", True, False), ("collude", False, False), ("noise", False, False), ("clean", True, True)]
    assert ("absent", True, False) not in runs.setting_plan(config.model_copy(update={"absent_run": False}), (3, 20))


def test_fresh_run_deletes_a_suites_kept_progress(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_SUITES", {})
    seen = []

    @registry.register_suite("kept", num_threads=1)
    def kept(mode: str, out_dir: Path) -> dict:
        """A suite that reports what progress it found."""
        p = Progress(out_dir / PROGRESS_DIR / "kept" / "fp")
        seen.append(p.get("part"))
        p.put("part", {"v": len(seen)})
        return {"tables": [], "plots": []}

    out = tmp_path / "out"
    run_suites(["kept"], "quick", out, tmp_path / "b.md", discover=False)
    run_suites(["kept"], "quick", out, tmp_path / "b.md", discover=False)
    run_suites(["kept"], "quick", out, tmp_path / "b.md", discover=False, fresh=True)
    assert seen == [None, {"v": 1, "progress_commit": "unknown"}, None]


def test_run_once_runs_a_missing_part_and_reads_a_kept_one_back(tmp_path):
    calls = []

    def run():
        calls.append(1)
        return {"pair": (1, 2)}

    p = Progress(tmp_path)
    first, resumed_first = p.run_once("a", run, commit="c1")
    second, resumed_second = Progress(tmp_path).run_once("a", run, commit="c2")
    assert calls == [1] and (resumed_first, resumed_second) == (False, True)
    assert first == second == {"pair": [1, 2], "progress_commit": "c1"}  # kept at its first commit
