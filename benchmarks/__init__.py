"""eclm benchmarks: speed, size and accuracy figures, saved as JSON and rendered to Markdown.

Run ``python -m benchmarks.run --mode quick|full [--suite NAME ...]`` (or ``make bench`` /
``make bench-quick``). Each suite is one file in :mod:`benchmarks.suites` registered with
:func:`benchmarks.registry.register_suite`; the harness writes ``benchmarks/results/<suite>.json``
and re-renders ``docs/benchmarks.md`` from every result present. A suite may report target figures
(:mod:`benchmarks.targets`), kept across runs in ``<results dir>/targets.json``.

This package is pure Python/torch: it never imports Ray or MLflow.
"""

from benchmarks.registry import MODES, RUN_MODES, Suite, discover_suites, register_suite, registered_suites
from benchmarks.report import Table, render_markdown, write_report

__all__ = [
    "MODES",
    "RUN_MODES",
    "Suite",
    "Table",
    "discover_suites",
    "register_suite",
    "registered_suites",
    "render_markdown",
    "write_report",
]
