"""The shape the code must keep (issue #10's design bar): small functions, a thin platform facade,
and typed messages between services instead of JSON strings."""

from __future__ import annotations

import ast
from pathlib import Path

ECLM = Path(__file__).resolve().parents[2] / "eclm"
MAX_FUNCTION_LINES = 60


def _functions():
    for path in sorted(ECLM.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield path.relative_to(ECLM.parent), node


def test_no_function_is_longer_than_sixty_lines():
    long = [f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path, node in _functions() if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


def test_the_platform_is_a_thin_facade():
    assert len((ECLM / "platform.py").read_text().splitlines()) < 250


def test_no_public_function_takes_a_json_string():
    found = []
    for path, node in _functions():
        if node.name.startswith("_") and node.name != "__init__":
            continue  # a private cache may key on text
        for arg in [*node.args.args, *node.args.kwonlyargs]:
            annotation = ast.unparse(arg.annotation) if arg.annotation is not None else ""
            if arg.arg.endswith("_json") and "str" in annotation:
                found.append(f"{path}:{node.lineno} {node.name}({arg.arg}: {annotation})")
    assert found == []
