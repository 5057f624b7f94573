"""Suite registry: a decorator registers a benchmark suite; importing the suites package finds them.

Adding a suite is one new file in ``benchmarks/suites/`` holding a function decorated with
``@register_suite("name")``; the harness discovers it by importing every public module of that
package (timm's ``register_model`` pattern, applied to benchmarks).
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# quick and full are what `make bench-quick` / `make bench` run; smoke is a seconds-long setting
# that only the tests use (every suite's code path, meaningless figures).
RUN_MODES = ("quick", "full")
MODES = (*RUN_MODES, "smoke")

# A suite maps (mode, out_dir) to its JSON-able result: {"tables": [...], "plots": [...], ...}.
SuiteFunction = Callable[[str, Path], dict]

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_SUITES: dict[str, Suite] = {}


@dataclass(frozen=True)
class Suite:
    """A registered benchmark suite.

    Attributes:
        name: Suite name; also the stem of its result file ``<name>.json``.
        run: ``run(mode, out_dir) -> dict`` returning at least ``tables`` and ``plots``
            (optionally ``targets``, see :mod:`benchmarks.targets`); ``mode`` is one of
            :data:`MODES`.
        num_threads: torch intra-op threads the harness sets before running it; ``None`` means
            one per usable CPU core.
        description: First line of the function's docstring, shown in the report.
    """

    name: str
    run: SuiteFunction
    num_threads: int | None = None
    description: str = ""


def register_suite(name: str, *, num_threads: int | None = None) -> Callable[[SuiteFunction], SuiteFunction]:
    """Decorator registering ``fn(mode, out_dir) -> dict`` as the benchmark suite ``name``.

    Args:
        name: Lower-case identifier (``[a-z][a-z0-9_]*``), unique among suites.
        num_threads: torch threads for this suite (default: one per usable core).

    Returns:
        The decorator; it returns the function unchanged.

    Raises:
        ValueError: If ``name`` is malformed, ``num_threads`` is not positive, or another function
            is already registered under ``name``.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"suite name must match {_NAME.pattern}, got {name!r}")
    if num_threads is not None and num_threads < 1:
        raise ValueError(f"suite {name!r}: num_threads must be >= 1, got {num_threads}")

    def decorate(fn: SuiteFunction) -> SuiteFunction:
        previous = _SUITES.get(name)
        # Re-importing the same module re-registers the same function: harmless. A different
        # function under the same name would silently shadow a suite, so refuse it.
        if previous is not None and _qualified(previous.run) != _qualified(fn):
            raise ValueError(f"suite {name!r} is already registered by {_qualified(previous.run)}")
        doc = (fn.__doc__ or "").strip().splitlines()
        _SUITES[name] = Suite(name, fn, num_threads, doc[0] if doc else "")
        return fn

    return decorate


def registered_suites() -> dict[str, Suite]:
    """The registered suites by name (a copy; register with :func:`register_suite`)."""
    return dict(_SUITES)


def discover_suites(package: str = "benchmarks.suites") -> dict[str, str]:
    """Import every public module of ``package`` so that its suites register themselves.

    A module that fails to import must not hide the other suites, so import errors are
    collected instead of raised.

    Args:
        package: Dotted name of the package holding one module per suite.

    Returns:
        ``{module name: formatted traceback}`` for the modules that failed to import.
    """
    pkg = importlib.import_module(package)
    failures: dict[str, str] = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("_"):
            continue
        try:
            importlib.import_module(f"{package}.{info.name}")
        except Exception:  # noqa: BLE001 - reported by the harness as a failed suite
            failures[info.name] = traceback.format_exc()
    return failures


def _qualified(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
