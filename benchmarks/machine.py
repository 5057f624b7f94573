"""Description of the machine a benchmark ran on: CPU, cores, memory and library versions."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

import psutil

_VERSIONED = ("torch", "timm", "numpy", "scipy")


def usable_cores() -> int:
    """CPU cores this process may run on (respects affinity masks and container limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not available on macOS / Windows
        return max(1, os.cpu_count() or 1)


def cpu_model() -> str:
    """The CPU's marketing name, e.g. ``"AMD EPYC 7B13"`` (best effort, never raises)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def machine_info() -> dict:
    """A JSON-able description of this machine and the library versions in use.

    Returns:
        ``{"cpu", "cores", "logical_cpus", "physical_cores", "ram_gib", "os", "python",
        "omp_wait_policy", "versions": {package: version}}``; ``cores`` is the number of usable
        cores.
    """
    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "versions": versions,
    }


def describe(machine: dict) -> str:
    """One line summarising :func:`machine_info`'s output for reports."""
    v = machine.get("versions", {})
    return (
        f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} usable cores, "
        f"{machine.get('ram_gib', '?')} GiB RAM, Python {machine.get('python', '?')}, "
        f"torch {v.get('torch', '?')}, timm {v.get('timm', '?')}"
    )
