"""Description of the machine a benchmark ran on: CPU, cores, memory and library versions."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

import psutil

from eclm.pipelines.merge_workers import available_cores

_VERSIONED = ("torch", "timm", "numpy", "scipy")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS reports one): the count
    the platform sizes its own worker threads by (:func:`eclm.pipelines.merge_workers.available_cores`)."""
    return available_cores()


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
