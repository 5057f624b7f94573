"""Benchmark suites, one module per suite; each registers itself with ``@register_suite``.

To add a suite, create ``benchmarks/suites/<name>.py`` with::

    from pathlib import Path

    from benchmarks.registry import register_suite
    from benchmarks.report import Table


    @register_suite("<name>")
    def run(mode: str, out_dir: Path) -> dict:
        \"\"\"One line describing what the suite measures.\"\"\"
        table = Table("Title", ["col a", "col b"], [[1, 2.5]], notes="how it was measured")
        return {"tables": [table.to_dict()], "plots": []}

``mode`` is ``"quick"``, ``"full"`` or ``"smoke"``: smoke is a seconds-long setting run by the
tests (``tests/integration/test_bench_smoke.py``) through the same harness, so every suite's code
path is exercised by ``make test``; its figures mean nothing. Plots are PNG files written into
``out_dir`` and listed by their path relative to it. A suite may add ``"targets"`` (see
:mod:`benchmarks.targets`). Modules whose name starts with ``_`` are not imported by discovery.
"""
