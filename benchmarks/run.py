"""Benchmark harness: ``python -m benchmarks.run --mode quick|full [--suite NAME ...] [--out DIR]``.

Runs the selected registered suites one after another, saves each result as
``<out>/<suite>.json`` (plots next to it), merges the suites' target records into
``<out>/targets.json`` (:mod:`benchmarks.targets`), then re-renders the Markdown report from every
result present. A suite that raises is recorded with its traceback under ``"error"`` and the
others still run; the failed suites are listed at the end and the exit status is then non-zero.

Mode ``"smoke"`` runs every suite in a seconds-long setting for the tests; its results may not go
into the repository's results or docs directories.
"""

from __future__ import annotations

import os

# Must precede the first torch import (libgomp reads it once when it loads). With the default
# spinning wait, an OpenMP barrier stalls whenever another process holds one of the cores, and a
# forward pass on 2 threads was measured 20-60x slower on a shared 2-core machine; passive waiting
# keeps timings stable. An explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.machine import machine_info, usable_cores  # noqa: E402
from benchmarks.progress import REPO_ROOT  # noqa: E402
from benchmarks.progress import clear as clear_progress  # noqa: E402
from benchmarks.registry import MODES, RUN_MODES, Suite, discover_suites, registered_suites  # noqa: E402
from benchmarks.report import check_result, write_report  # noqa: E402
from benchmarks.targets import TARGETS_FILE, check_targets, git_commit, merge_targets, stamp  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results"
DEFAULT_DOCS = REPO_ROOT / "docs" / "benchmarks.md"
QUICK_OUT = DEFAULT_OUT / "quick"
QUICK_DOCS = REPO_ROOT / "docs" / "benchmarks-quick.md"


def default_paths(mode: str) -> tuple[Path, Path]:
    """Where a mode's results and report go unless given: full mode the published ones
    (``benchmarks/results``, ``docs/benchmarks.md``), quick mode its own folder and report (as
    ``make bench-quick`` writes them).

    Raises:
        ValueError: For smoke mode (tests only), which must be given paths outside the repository.
    """
    if mode == "full":
        return DEFAULT_OUT, DEFAULT_DOCS
    if mode == "quick":
        return QUICK_OUT, QUICK_DOCS
    raise ValueError(f"mode {mode!r} has no default results directory: pass --out and --docs")


def run_suite(suite: Suite, mode: str, out_dir: Path, machine: dict) -> dict:
    """Run one suite and return its complete result (never raises for a failing suite).

    Args:
        suite: The registered suite.
        mode: ``"quick"``, ``"full"`` or ``"smoke"``.
        out_dir: Directory for its JSON and plots (created if needed).
        machine: :func:`machine_info` recorded into the result.

    Returns:
        The suite's dict with ``suite``, ``mode``, ``machine``, ``started``, ``seconds`` filled in;
        on failure ``tables`` and ``plots`` are empty and ``error`` holds the traceback.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(suite.num_threads or usable_cores())
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    try:
        body = suite.run(mode, out_dir)
        check_result(body)
        body = json.loads(json.dumps(body, default=_to_json))  # fail here, not half-way through a write
        error = None
    except Exception:  # noqa: BLE001 - any suite failure is reported, the harness goes on
        body, error = {"tables": [], "plots": []}, traceback.format_exc()
    finally:
        torch.set_num_threads(threads_before)
    result = {
        **body,
        "suite": suite.name,
        "description": suite.description,
        "mode": mode,
        "machine": machine,
        "started": started,
        "seconds": round(time.perf_counter() - t0, 3),
        "threads": suite.num_threads or usable_cores(),
    }
    if error is not None:
        result["error"] = error
    return result


def run_suites(
    names: Sequence[str] | None,
    mode: str,
    out_dir: Path | None = None,
    docs_path: Path | None = None,
    *,
    discover: bool = True,
    fresh: bool = False,
) -> list[dict]:
    """Run suites, save their JSON results and targets, and re-render the report.

    Args:
        names: Suites to run (``None`` or empty: every registered suite, sorted by name).
        mode: ``"quick"``, ``"full"`` or ``"smoke"`` (tests only).
        out_dir: Results directory (``None``: the mode's, :func:`default_paths`).
        docs_path: Markdown report to (re)write from all results in ``out_dir`` (``None``: the mode's).
        discover: Import :mod:`benchmarks.suites` first; suite modules that fail to import are
            reported as failed suites named after the module.
        fresh: Delete each suite's kept progress (:mod:`benchmarks.progress`) before it runs.

    Returns:
        The results of the suites run in this call, in run order.

    Raises:
        ValueError: If ``mode`` is unknown, a requested suite is not registered, smoke results
            would land in the repository's results or docs directory, or quick results in the
            full-mode ones.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if out_dir is None or docs_path is None:
        default_out, default_docs = default_paths(mode)
        out_dir, docs_path = out_dir or default_out, docs_path or default_docs
    out_dir, docs_path = Path(out_dir), Path(docs_path)
    if mode not in RUN_MODES:
        _refuse_repository_paths(mode, out_dir, docs_path)
    elif mode != "full":
        _refuse_published_paths(mode, out_dir, docs_path)
    import_failures = discover_suites() if discover else {}
    suites = registered_suites()
    wanted = list(dict.fromkeys(names)) if names else sorted(set(suites) | set(import_failures))
    unknown = [n for n in wanted if n not in suites and n not in import_failures]
    if unknown:
        raise ValueError(f"unknown suite(s) {unknown}; registered: {sorted(suites)}")
    machine = machine_info()
    commit = git_commit(REPO_ROOT)
    results = []
    for name in wanted:
        if name in suites:
            if fresh and clear_progress(out_dir, name):
                print(f"[bench] {name}: kept progress deleted (--fresh)", flush=True)
            print(f"[bench] {name} ({mode}) ...", flush=True)
            result = run_suite(suites[name], mode, out_dir, machine)
        else:
            # The module never imported, so no suite registered: report it under the module name.
            result = {"suite": name, "mode": mode, "machine": machine, "tables": [], "plots": [],
                      "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seconds": 0.0,
                      "error": import_failures[name]}
        _write_json(out_dir / f"{name}.json", result)
        if "error" not in result and result.get("targets"):
            records = stamp(check_targets(result["targets"]), name, mode, commit)
            merge_targets(out_dir / TARGETS_FILE, records)
        status = "FAILED" if "error" in result else "ok"
        print(f"[bench] {name}: {status} in {result['seconds']:.1f} s -> {out_dir / (name + '.json')}", flush=True)
        results.append(result)
    write_report(out_dir, docs_path, machine)
    print(f"[bench] report: {docs_path}", flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=RUN_MODES, default="quick", help="quick (minutes) or full")
    parser.add_argument("--suite", nargs="+", action="extend", default=[], metavar="NAME",
                        help="suite(s) to run (default: all registered)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results directory (default: benchmarks/results in full mode, benchmarks/results/quick in quick)")
    parser.add_argument("--docs", type=Path, default=None,
                        help="Markdown report to re-render (default: docs/benchmarks.md in full mode, "
                        "docs/benchmarks-quick.md in quick)")
    parser.add_argument("--fresh", action="store_true",
                        help="delete the suites' kept progress first (benchmarks/progress.py): run every part again")
    args = parser.parse_args(argv)
    try:
        results = run_suites(args.suite, args.mode, args.out, args.docs, fresh=args.fresh)
    except ValueError as err:
        parser.error(str(err))
    failed = [r for r in results if "error" in r]
    for r in failed:
        print(f"--- {r['suite']} ---\n{r['error']}", file=sys.stderr)
    if failed:
        # Last, so it is what a reader of a long log sees first.
        print(f"[bench] FAILED suites ({len(failed)} of {len(results)}): {', '.join(r['suite'] for r in failed)}",
              file=sys.stderr, flush=True)
        return 1
    print(f"[bench] all {len(results)} suite(s) ok", flush=True)
    return 0


def _refuse_published_paths(mode: str, out_dir: Path, docs_path: Path) -> None:
    """Quick results must not overwrite the published full-mode ones (a robustness run of the
    full protocol takes hours; a quick run over it would replace it and its targets silently)."""
    for given, published in ((out_dir, DEFAULT_OUT), (docs_path, DEFAULT_DOCS)):
        if given.resolve() == published.resolve():
            raise ValueError(f"mode {mode!r} must not write into {given}: that holds the full-mode results "
                             f"(quick mode's own are {QUICK_OUT.relative_to(REPO_ROOT)} and "
                             f"{QUICK_DOCS.relative_to(REPO_ROOT)})")


def _refuse_repository_paths(mode: str, out_dir: Path, docs_path: Path) -> None:
    """Smoke results are meaningless figures: they must never overwrite the published ones."""
    guarded = (REPO_ROOT / "benchmarks" / "results", REPO_ROOT / "docs")
    for path in (out_dir, docs_path):
        resolved = path.resolve()
        if any(resolved == g or g in resolved.parents for g in guarded):
            raise ValueError(f"mode {mode!r} must not write into {path} (use a temporary directory)")


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_to_json) + "\n")
    tmp.replace(path)


def _to_json(value: object) -> object:
    # Suites naturally produce numpy scalars/arrays, tensors and paths; store them as plain JSON.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray | torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return value.as_posix()
    if isinstance(value, tuple | set):
        return list(value)
    raise TypeError(f"value of type {type(value).__name__} is not JSON serialisable")


if __name__ == "__main__":
    sys.exit(main())
