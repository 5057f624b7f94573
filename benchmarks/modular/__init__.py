"""The modular-core benchmark: sub-model size/speed per budget, and selection quality on digits."""

from benchmarks.modular.compression import BackboneSummary, BudgetPoint, measure_backbone, run_compression
from benchmarks.modular.config import BackboneCase, CompressionSettings, ModulesBenchConfig, SelectionSettings
from benchmarks.modular.selection import largest_prefix_within, run_selection, width_prefix_spec

__all__ = [
    "BackboneCase",
    "BackboneSummary",
    "BudgetPoint",
    "CompressionSettings",
    "ModulesBenchConfig",
    "SelectionSettings",
    "largest_prefix_within",
    "measure_backbone",
    "run_compression",
    "run_selection",
    "width_prefix_spec",
]
