"""Every benchmark suite, run tiny through the harness ``make bench`` uses (mode ``"smoke"``).

A suite whose code path breaks (an API it calls changed, a table it builds no longer fits) fails
here, in ``make test``, instead of after minutes of ``make bench``. The suites run through
:func:`benchmarks.run.run_suites` with the registry, into a temporary results directory, and the
report is rendered from their JSON. The figures of the smoke setting mean nothing and are never
written into ``benchmarks/results`` or ``docs/``. The Ray-using suites share the module's one
local Ray (``local_ray`` from ``conftest.py``). Select with ``pytest -m bench``.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from benchmarks import registry
from benchmarks.report import check_result
from benchmarks.run import run_suites
from benchmarks.targets import TARGETS_FILE, load_targets

pytestmark = pytest.mark.bench

IMPORT_FAILURES = registry.discover_suites()
SUITES = sorted(set(registry.registered_suites()) | set(IMPORT_FAILURES))
# Suites that cannot run in a seconds-long setting, with the reason; they are still imported and
# their registration checked. None today: keep it that way.
CANNOT_RUN_TINY: dict[str, str] = {}
# These start Ray when none runs; here they use the module's one instead of starting three.
RAY_SUITES = {"platform_overhead", "scale", "serving"}


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One results directory for the module: the report accumulates every suite's section."""
    return tmp_path_factory.mktemp("bench-smoke")


def test_every_suite_module_imports_and_registers() -> None:
    assert IMPORT_FAILURES == {}, "\n".join(IMPORT_FAILURES.values())
    assert {"adaptation", "modules", "platform_overhead", "robustness", "scale", "serving", "split"} <= set(SUITES)
    assert set(CANNOT_RUN_TINY) <= set(SUITES) and RAY_SUITES <= set(SUITES)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.integration) if n in RAY_SUITES else n
                                  for n in SUITES])
def test_suite_runs_tiny_through_the_harness(name: str, results_dir: Path, request: pytest.FixtureRequest) -> None:
    suite = registry.registered_suites().get(name)
    assert suite is not None, IMPORT_FAILURES.get(name, f"{name} is not registered")
    assert list(inspect.signature(suite.run).parameters)[:2] == ["mode", "out_dir"] and suite.description
    if name in CANNOT_RUN_TINY:
        pytest.skip(CANNOT_RUN_TINY[name])
    if name in RAY_SUITES:
        request.getfixturevalue("local_ray")
    docs = results_dir / "benchmarks.md"

    (result,) = run_suites([name], "smoke", results_dir, docs, discover=False)

    assert "error" not in result, result["error"]
    saved = json.loads((results_dir / f"{name}.json").read_text())
    check_result(saved)
    assert saved["suite"] == name and saved["mode"] == "smoke"
    assert saved["tables"] and any(t["rows"] for t in saved["tables"])
    assert all((results_dir / plot).read_bytes()[:4] == b"\x89PNG" for plot in saved["plots"])
    text = docs.read_text()
    assert f"## Suite `{name}`\n" in text, "the report lacks the suite's section (or marks it failed)"
    assert all(f"### {t['title']}" in text for t in saved["tables"])
    names = {t["name"] for t in saved.get("targets", [])}
    stored = {r["name"]: r for r in load_targets(results_dir / TARGETS_FILE)}
    assert all(stored[n]["mode"] == "smoke" and stored[n]["suite"] == name for n in names)
