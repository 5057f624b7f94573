"""Benchmark targets: validation, merging into targets.json across runs, and the report's Targets table;
plus the harness's failure reporting and its refusal to write smoke results into the repository."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import registry
from benchmarks.run import REPO_ROOT, main, run_suites
from benchmarks.targets import TARGETS_FILE, check_targets, git_commit, is_met, load_targets


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Suites registered inside a test disappear after it."""
    monkeypatch.setattr(registry, "_SUITES", {})


def _target(name: str, value: float | None, op: str = ">=", target: float = 0.5, spread: float | None = 0.01,
            **extra) -> dict:
    return {"name": name, "value": value, "op": op, "target": target, "spread": spread, **extra}


def _register(name: str, targets: list[dict]) -> None:
    """(Re-)register suite ``name`` returning ``targets``."""
    registry._SUITES.pop(name, None)

    def run(mode: str, out_dir: Path) -> dict:
        """A suite reporting targets."""
        return {"tables": [{"title": f"{name} table", "columns": ["a"], "rows": [[1]]}], "plots": [],
                "targets": targets}

    registry.register_suite(name)(run)


def _records(out: Path) -> dict[str, dict]:
    return {r["name"]: r for r in json.loads((out / TARGETS_FILE).read_text())}


def test_targets_are_stamped_and_merged_across_runs(isolated_registry: None, tmp_path: Path) -> None:
    out, docs = tmp_path / "results", tmp_path / "bench.md"
    _register("alpha", [_target("alpha.acc", 0.9), _target("alpha.latency", 12.0, "<=", 10.0, None)])
    _register("beta", [_target("beta.speedup", 2.0, target=1.5)])
    run_suites(["alpha", "beta"], "quick", out, docs, discover=False)

    first = _records(out)
    assert set(first) == {"alpha.acc", "alpha.latency", "beta.speedup"}
    for record in first.values():
        assert set(record) >= {"name", "value", "op", "target", "spread", "mode", "commit", "met"}
        assert record["mode"] == "quick" and record["commit"] == git_commit(REPO_ROOT)
    assert first["alpha.acc"]["met"] is True and first["alpha.latency"]["met"] is False
    assert first["alpha.latency"]["value"] == 12.0  # a missed target stays, with its value

    # Re-run only alpha, now in full mode with other figures and one target gone: its records are
    # replaced by name, beta's stay untouched, and a name alpha no longer reports stays as it was.
    _register("alpha", [_target("alpha.acc", 0.4), _target("alpha.new", None, reason="no GPU here")])
    run_suites(["alpha"], "full", out, docs, discover=False)

    second = _records(out)
    assert second["beta.speedup"] == first["beta.speedup"]
    assert second["alpha.acc"]["value"] == 0.4 and second["alpha.acc"]["met"] is False
    assert second["alpha.acc"]["mode"] == "full"
    assert second["alpha.latency"] == first["alpha.latency"]
    assert second["alpha.new"]["value"] is None and second["alpha.new"]["met"] is False
    assert second["alpha.new"]["reason"] == "no GPU here"
    assert list(second) == ["alpha.acc", "alpha.latency", "beta.speedup", "alpha.new"]  # replaced in place


def test_report_renders_the_targets_table(isolated_registry: None, tmp_path: Path) -> None:
    out, docs = tmp_path / "results", tmp_path / "bench.md"
    _register("alpha", [_target("alpha.acc", 0.9, spread=0.02),
                        _target("alpha.latency", 12.0, "<=", 10.0, None),
                        _target("alpha.memory", None, "<=", 1.0, reason="probe disabled")])

    run_suites(["alpha"], "quick", out, docs, discover=False)

    text = docs.read_text()
    assert "## Targets" in text and text.index("## Targets") < text.index("## Suite `alpha`")
    commit = git_commit(REPO_ROOT).replace("|", "\\|")
    assert f"| alpha.acc | 0.9 ± 0.02 | >= 0.5 | met | quick | {commit} |" in text
    assert f"| alpha.latency | 12 | <= 10 | **MISSED** | quick | {commit} |" in text
    assert "| alpha.memory | not measured | <= 1 | **MISSED** |" in text and "probe disabled" in text


def test_report_without_targets_has_no_targets_section(isolated_registry: None, tmp_path: Path) -> None:
    _register("plain", [])

    run_suites(["plain"], "quick", tmp_path, tmp_path / "bench.md", discover=False)

    assert "## Targets" not in (tmp_path / "bench.md").read_text() and not (tmp_path / TARGETS_FILE).exists()


@pytest.mark.parametrize(("targets", "message"), [
    ({"name": "x"}, "must be a list"),
    ([_target("x", 1.0, op="<")], "op must be one of"),
    ([_target("x", math.inf)], "finite"),
    ([_target("x", math.nan)], "finite"),
    ([_target("x", 1.0, target=math.inf)], "finite"),
    ([_target("x", "fast")], "must be a number"),
    ([_target("x", True)], "must be a number"),
    ([_target("x", None)], "reason"),
    ([_target("x", 1.0, spread=-0.1)], "spread must be >= 0"),
    ([_target("x", 1.0), _target("x", 2.0)], "used twice"),
    ([{"name": "x", "value": 1.0, "op": ">="}], "lacks field"),
    ([_target("", 1.0)], "non-empty"),
])
def test_malformed_targets_are_rejected(targets, message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        check_targets(targets)


def test_a_suite_with_malformed_targets_fails_and_keeps_the_old_records(isolated_registry: None,
                                                                       tmp_path: Path) -> None:
    out, docs = tmp_path / "results", tmp_path / "bench.md"
    _register("alpha", [_target("alpha.acc", 0.9)])
    run_suites(["alpha"], "quick", out, docs, discover=False)
    _register("alpha", [_target("alpha.acc", math.inf)])

    (result,) = run_suites(["alpha"], "quick", out, docs, discover=False)

    assert "finite" in result["error"]
    assert _records(out)["alpha.acc"]["value"] == 0.9


@pytest.mark.parametrize(("value", "op", "met"), [(1.0, ">=", True), (0.5, ">=", True), (0.4, ">=", False),
                                                 (0.4, "<=", True), (0.6, "<=", False), (None, "<=", False)])
def test_is_met(value, op: str, met: bool) -> None:
    assert is_met({"value": value, "op": op, "target": 0.5}) is met


def test_unreadable_targets_file_reads_as_empty(tmp_path: Path) -> None:
    (tmp_path / TARGETS_FILE).write_text("{not json")
    assert load_targets(tmp_path / TARGETS_FILE) == [] and load_targets(tmp_path / "missing.json") == []


def test_commit_is_unknown_outside_a_git_checkout(tmp_path: Path) -> None:
    assert git_commit(tmp_path) == "unknown"
    assert git_commit(REPO_ROOT) != "unknown"


def test_failed_suite_is_marked_at_its_heading_and_listed_last(isolated_registry: None, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    _register("fine", [])

    @registry.register_suite("broken")
    def broken(mode: str, out_dir: Path) -> dict:
        """Always raises."""
        raise RuntimeError("boom")

    monkeypatch.setattr("benchmarks.run.discover_suites", lambda package="": {})
    docs = tmp_path / "b.md"

    status = main(["--mode", "quick", "--out", str(tmp_path / "r"), "--docs", str(docs), "--suite", "fine", "broken"])

    assert status == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "RuntimeError: boom" in "\n".join(err)
    assert err[-1] == "[bench] FAILED suites (1 of 2): broken"
    text = docs.read_text()
    assert "## Suite `broken` — FAILED" in text and "## Suite `fine`\n" in text
    assert "**Failed suites: broken**" in text


@pytest.mark.parametrize("where", ["results", "docs"])
def test_smoke_results_never_go_into_the_repository(isolated_registry: None, tmp_path: Path, where: str) -> None:
    _register("fine", [])
    out = REPO_ROOT / "benchmarks" / "results" / "smoke" if where == "results" else tmp_path
    docs = REPO_ROOT / "docs" / "benchmarks-smoke.md" if where == "docs" else tmp_path / "b.md"

    with pytest.raises(ValueError, match="smoke"):
        run_suites(["fine"], "smoke", out, docs, discover=False)

    assert not out.exists() or out == tmp_path
    assert not (REPO_ROOT / "docs" / "benchmarks-smoke.md").exists()


def test_command_line_offers_only_quick_and_full() -> None:
    with pytest.raises(SystemExit):
        main(["--mode", "smoke"])
