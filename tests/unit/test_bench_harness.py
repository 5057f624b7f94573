"""The benchmark harness (registry, JSON results, Markdown report) and the modules suite's core."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import registry
from benchmarks.modular.config import ModulesBenchConfig
from benchmarks.report import Table, render_markdown
from benchmarks.run import default_paths, main, run_suites

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Suites registered inside a test disappear after it."""
    monkeypatch.setattr(registry, "_SUITES", {})


def _register_dummy_suites() -> None:
    @registry.register_suite("dummy_ok", num_threads=1)
    def dummy_ok(mode: str, out_dir: Path) -> dict:
        """A suite that always works."""
        (out_dir / "dummy.png").write_bytes(b"\x89PNG fake")
        table = Table("Dummy speed", ["case", "value | unit"], [["a", 1.5], ["b", 2]], notes="dummy notes")
        return {"tables": [table.to_dict()], "plots": ["dummy.png"], "extra": {"mode_seen": mode}}

    @registry.register_suite("dummy_broken")
    def dummy_broken(mode: str, out_dir: Path) -> dict:
        """A suite that always raises."""
        raise RuntimeError("dummy suite exploded")


@pytest.mark.parametrize("mode", ["quick", "full"])
def test_harness_writes_json_and_markdown(isolated_registry: None, tmp_path: Path, mode: str) -> None:
    _register_dummy_suites()
    out, docs = tmp_path / "results", tmp_path / "docs" / "bench.md"

    results = run_suites(["dummy_ok"], mode, out, docs, discover=False)

    saved = json.loads((out / "dummy_ok.json").read_text())
    for key in ("suite", "mode", "machine", "started", "seconds", "tables", "plots"):
        assert key in saved, key
    assert saved["suite"] == "dummy_ok" and saved["mode"] == mode and saved["extra"]["mode_seen"] == mode
    assert saved["tables"][0]["rows"] == [["a", 1.5], ["b", 2]]
    assert "error" not in saved and results[0]["suite"] == "dummy_ok"
    text = docs.read_text()
    assert "## Suite `dummy_ok`" in text and "### Dummy speed" in text
    assert "| case | value \\| unit |" in text and "| a | 1.5 |" in text and "dummy notes" in text
    assert "make bench-quick" in text and saved["machine"]["cpu"] in text
    assert "](../results/dummy.png)" in text


def test_failing_suite_is_reported_and_others_still_run(isolated_registry: None, tmp_path: Path) -> None:
    _register_dummy_suites()
    out, docs = tmp_path / "results", tmp_path / "bench.md"

    results = run_suites(["dummy_broken", "dummy_ok"], "quick", out, docs, discover=False)

    assert [r["suite"] for r in results] == ["dummy_broken", "dummy_ok"]
    broken = json.loads((out / "dummy_broken.json").read_text())
    assert "RuntimeError: dummy suite exploded" in broken["error"] and broken["tables"] == []
    assert "error" not in json.loads((out / "dummy_ok.json").read_text())
    text = docs.read_text()
    assert "This suite failed" in text and "dummy suite exploded" in text and "### Dummy speed" in text


def test_cli_exits_nonzero_when_a_suite_fails(isolated_registry: None, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _register_dummy_suites()
    monkeypatch.setattr(registry, "discover_suites", lambda package="": {})
    monkeypatch.setattr("benchmarks.run.discover_suites", lambda package="": {})
    args = ["--mode", "quick", "--out", str(tmp_path / "r"), "--docs", str(tmp_path / "b.md")]

    assert main(args + ["--suite", "dummy_ok"]) == 0
    assert main(args + ["--suite", "dummy_ok", "dummy_broken"]) == 1
    with pytest.raises(SystemExit):
        main(args + ["--suite", "no_such_suite"])


def test_report_accumulates_results_from_separate_runs(isolated_registry: None, tmp_path: Path) -> None:
    _register_dummy_suites()
    out, docs = tmp_path / "results", tmp_path / "bench.md"

    run_suites(["dummy_ok"], "quick", out, docs, discover=False)
    run_suites(["dummy_broken"], "quick", out, docs, discover=False)

    text = docs.read_text()
    assert "## Suite `dummy_ok`" in text and "## Suite `dummy_broken`" in text


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: registry.register_suite("Bad-Name"), ValueError),
        (lambda: registry.register_suite("fine", num_threads=0), ValueError),
        (lambda: run_suites(["x"], "medium", Path("/nonexistent"), Path("/nonexistent.md"), discover=False),
         ValueError),
        (lambda: Table("t", ["a", "b"], [[1]]), ValueError),
    ],
)
def test_bad_input_raises(isolated_registry: None, call, error: type[Exception]) -> None:
    with pytest.raises(error):
        call()


def test_each_mode_writes_to_its_own_results_and_a_quick_run_never_replaces_the_full_ones(
        isolated_registry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_paths("full") == (REPO / "benchmarks" / "results", REPO / "docs" / "benchmarks.md")
    assert default_paths("quick") == (REPO / "benchmarks" / "results" / "quick", REPO / "docs" / "benchmarks-quick.md")
    with pytest.raises(ValueError, match="pass --out and --docs"):
        default_paths("smoke")
    _register_dummy_suites()
    ran: list[str] = []
    monkeypatch.setattr("benchmarks.run.run_suite", lambda *a, **k: ran.append("ran"))
    for out, docs in [(REPO / "benchmarks" / "results", REPO / "benchmarks" / "x.md"),
                      (REPO / "benchmarks" / "results" / "quick", REPO / "docs" / "benchmarks.md")]:
        with pytest.raises(ValueError, match="full-mode results"):
            run_suites(["dummy_ok"], "quick", out, docs, discover=False)
    assert not ran  # refused before anything ran or was written
    with pytest.raises(SystemExit):  # the command line: smoke mode without paths is an argument error
        main(["--mode", "smoke", "--suite", "dummy_ok"])


def test_duplicate_suite_name_is_refused(isolated_registry: None) -> None:
    def first(mode: str, out_dir: Path) -> dict:
        return {"tables": [], "plots": []}

    def second(mode: str, out_dir: Path) -> dict:
        return {"tables": [], "plots": []}

    registry.register_suite("twice")(first)
    registry.register_suite("twice")(first)  # re-importing a suite module re-registers: allowed
    with pytest.raises(ValueError, match="already registered"):
        registry.register_suite("twice")(second)


def test_suite_returning_malformed_table_is_an_error(isolated_registry: None, tmp_path: Path) -> None:
    registry.register_suite("ragged")(
        lambda mode, out_dir: {"tables": [{"title": "t", "columns": ["a", "b"], "rows": [[1]]}], "plots": []})

    (result,) = run_suites(["ragged"], "quick", tmp_path, tmp_path / "b.md", discover=False)

    assert "row 0 has 1 cells" in result["error"]


def test_render_without_results_mentions_it(tmp_path: Path) -> None:
    text = render_markdown([], {"cpu": "X", "versions": {"torch": "1"}}, tmp_path / "b.md", tmp_path)
    assert "No results yet" in text and "torch 1" in text


def test_discovery_registers_the_modules_suite(isolated_registry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # Force a fresh import so the suite registers into this test's empty registry.
    monkeypatch.delitem(sys.modules, "benchmarks.suites.modules", raising=False)

    failures = registry.discover_suites()

    assert failures == {}
    assert "modules" in registry.registered_suites()


def test_discovery_reports_a_suite_module_that_fails_to_import(
    isolated_registry: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = tmp_path / "fake_suites"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "good.py").write_text(
        "from benchmarks.registry import register_suite\n"
        "@register_suite('good')\n"
        "def run(mode, out_dir):\n    return {'tables': [], 'plots': []}\n"
    )
    (pkg / "broken.py").write_text("raise ImportError('missing dependency xyz')\n")
    (pkg / "_private.py").write_text("raise RuntimeError('private helpers are not imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    failures = registry.discover_suites("fake_suites")

    assert set(failures) == {"broken"} and "missing dependency xyz" in failures["broken"]
    assert "good" in registry.registered_suites()


def test_importing_benchmarks_does_not_import_ray() -> None:
    code = "import benchmarks.run, benchmarks.suites.modules, sys; assert 'ray' not in sys.modules, 'ray imported'"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.bench
def test_modules_suite_core_on_tiny_setting(tmp_path: Path) -> None:
    from benchmarks.suites.modules import run_modules_benchmark

    config = ModulesBenchConfig.tiny()

    result = run_modules_benchmark(config, tmp_path)

    for key in ("tables", "plots", "summary", "compression", "selection"):
        assert key in result, key
    json.dumps(result)  # the harness saves it as JSON
    points = result["compression"]["points"]
    assert {p["fraction"] for p in points} == set(config.compression.fractions)
    for p in points:
        assert p["params_ratio"] <= p["fraction"] + 1e-6, p
        assert p["gated_rel_error"] < 1e-4, p
    assert all(b["reconstruction_rel_error"] < 1e-5 for b in result["compression"]["backbones"])
    agg = result["selection"]["aggregate"]
    derived, prefix = agg["derived (ECLM)"], agg["width prefix (HeteroFL)"]
    assert derived["params"]["mean"] <= prefix["params"]["mean"]  # same budget, prefix fills it
    for variant in agg.values():
        assert 0.0 <= variant["acc_all"]["mean"] <= variant["acc_device"]["mean"] <= 1.0
    assert all((tmp_path / p).is_file() for p in result["plots"])
    assert [len(t["rows"]) for t in result["tables"]] == [1, len(points), 3]


@pytest.mark.parametrize(
    ("section", "bad"),
    [
        ("selection", {"device_classes": (3, 3)}),
        ("selection", {"prefix_groups": 4}),
        ("compression", {"fractions": [0.0, 0.5]}),
    ],
)
def test_modules_config_rejects_bad_values(section: str, bad: dict) -> None:
    data = ModulesBenchConfig.tiny().model_dump()
    data[section].update(bad)
    with pytest.raises(ValueError, match=next(iter(bad))):
        ModulesBenchConfig.model_validate(data)
