"""Lazy package exports (PEP 562): a package names what it exports and where it lives, and each
name is imported the first time it is used. Importing one light submodule (a config, say) then
does not pull in torch through its package's ``__init__``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping


def lazy_exports(
    package: str, exports: Mapping[str, tuple[str, str]], public: Iterable[str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """Module-level ``__getattr__`` and ``__dir__`` for ``package``.

    Args:
        package: The package's ``__name__``.
        exports: ``{exported name: (module, attribute)}``.
        public: The package's ``__all__``.

    Returns:
        ``(__getattr__, __dir__)`` to assign in the package's ``__init__``.
    """
    public = list(public)

    def __getattr__(name: str) -> object:
        if name in exports:
            module, attribute = exports[name]
            value = getattr(importlib.import_module(module), attribute)
            setattr(sys.modules[package], name, value)  # later lookups skip this function
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(public))

    return __getattr__, __dir__
