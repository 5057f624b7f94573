"""Benchmark targets: the figures a suite promises, checked and kept across runs in ``targets.json``.

A suite's result may carry ``"targets": [{"name", "value", "op", "target", "spread"}]``: ``value``
is the measured figure (mean over seeds; ``None`` with a ``reason`` when it could not be measured),
``op`` says which side of ``target`` is good (``"<="`` or ``">="``), ``spread`` its standard
deviation (or ``None``). The harness validates the records, stamps them with the run's mode and
commit and whether the target was met, and merges them into ``<results dir>/targets.json``: a
suite's new records replace the earlier records of the same names, every other record stays. A
missed target stays in the file with its value, so the report shows it as missed.
"""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Sequence
from pathlib import Path

OPS = ("<=", ">=")
TARGETS_FILE = "targets.json"
RECORD_KEYS = ("name", "value", "op", "target", "spread", "mode", "commit", "met")


def check_targets(targets: object) -> list[dict]:
    """Validate a suite's ``targets`` list and return plain copies of its records.

    Args:
        targets: The suite result's ``targets`` value.

    Returns:
        ``[{"name", "value", "op", "target", "spread"}]`` with floats (``"reason"`` kept when
        ``value`` is ``None``).

    Raises:
        TypeError: If ``targets`` is not a list of dicts.
        ValueError: If a record lacks a field, has an unknown ``op``, a non-finite ``value`` /
            ``target`` / ``spread``, a negative ``spread``, a ``None`` value without a
            ``reason``, or a name used twice.
    """
    if not isinstance(targets, list):
        raise TypeError(f"suite result field 'targets' must be a list, got {type(targets).__name__}")
    records, seen = [], set()
    for i, item in enumerate(targets):
        if not isinstance(item, dict):
            raise TypeError(f"target {i} must be a dict, got {type(item).__name__}")
        record = _check_record(item, f"target {i}")
        if record["name"] in seen:
            raise ValueError(f"target name {record['name']!r} is used twice")
        seen.add(record["name"])
        records.append(record)
    return records


def _check_record(item: dict, where: str) -> dict:
    missing = [k for k in ("name", "value", "op", "target") if k not in item]
    if missing:
        raise ValueError(f"{where} lacks field(s) {missing}")
    name = item["name"]
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}: name must be a non-empty string, got {name!r}")
    where = f"target {name!r}"
    if item["op"] not in OPS:
        raise ValueError(f"{where}: op must be one of {OPS}, got {item['op']!r}")
    record = {"name": name, "value": _finite(item["value"], f"{where}: value", allow_none=True),
              "op": item["op"], "target": _finite(item["target"], f"{where}: target"),
              "spread": _finite(item.get("spread"), f"{where}: spread", allow_none=True)}
    if record["spread"] is not None and record["spread"] < 0:
        raise ValueError(f"{where}: spread must be >= 0, got {record['spread']}")
    if record["value"] is None:
        reason = item.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError(f"{where}: a value of None needs a 'reason' saying why it was not measured")
        record["reason"] = reason
    return record


def _finite(value: object, what: str, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return float(value)


def is_met(record: dict) -> bool:
    """Whether ``record``'s value lies on the good side of its target (a missing value is not)."""
    value = record.get("value")
    if value is None:
        return False
    return value <= record["target"] if record["op"] == "<=" else value >= record["target"]


def stamp(records: Sequence[dict], suite: str, mode: str, commit: str) -> list[dict]:
    """Checked records with the suite, run mode, commit and ``met`` added (in :data:`RECORD_KEYS` order)."""
    out = []
    for r in records:
        extra = {"reason": r["reason"]} if "reason" in r else {}
        out.append({**{k: r[k] for k in ("name", "value", "op", "target", "spread")}, "mode": mode,
                    "commit": commit, "met": is_met(r), "suite": suite, **extra})
    return out


def load_targets(path: Path) -> list[dict]:
    """The records of a ``targets.json`` (an empty list if it is missing or unreadable)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return []
    return [r for r in data if isinstance(r, dict) and "name" in r] if isinstance(data, list) else []


def merge_targets(path: Path, records: Sequence[dict]) -> list[dict]:
    """Merge stamped ``records`` into the ``targets.json`` at ``path`` and write it atomically.

    Records whose name appears in ``records`` are replaced (in their old place; new names are
    appended); all other records stay as they were.

    Returns:
        The merged list as written.
    """
    path = Path(path)
    new = {r["name"]: r for r in records}
    merged = [new.pop(r["name"], r) for r in load_targets(path)]
    merged += list(new.values())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(merged, indent=2) + "\n")
    tmp.replace(path)
    return merged


def git_commit(repo: Path) -> str:
    """``git rev-parse --short HEAD`` of ``repo``, or ``"unknown"`` (no git, not a checkout)."""
    try:
        proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = proc.stdout.strip()
    return commit if proc.returncode == 0 and commit else "unknown"


def targets_table(records: Sequence[dict]) -> dict | None:
    """The report's "Targets" table (a :class:`~benchmarks.report.Table` dict), ``None`` without records."""
    if not records:
        return None
    rows = []
    for r in records:
        value = "not measured" if r.get("value") is None else _number(r["value"])
        if r.get("value") is not None and r.get("spread") is not None:
            value += f" ± {_number(r['spread'])}"
        status = "met" if r.get("met") else "**MISSED**"
        rows.append([r["name"], value, f"{r.get('op')} {_number(r.get('target'))}", status,
                     r.get("mode", "?"), r.get("commit", "?"), r.get("reason", "")])
    return {"title": "Targets", "columns": ["target", "value ± spread", "goal", "status", "mode", "commit", "note"],
            "rows": rows, "notes": f"From `{TARGETS_FILE}` next to the results: each figure as last measured "
            "(mean ± std over seeds), the mode and commit it was measured at. A missed target stays listed."}


def _number(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
