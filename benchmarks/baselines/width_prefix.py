"""HeteroFL-style width slicing expressed as sub-model specs of the modular cloud model.

A width-prefix slice keeps the first ``j`` of the ``N`` module groups of *every* module layer:
for a ResNet block that is the first ``j/N`` of its hidden channels, which is exactly HeteroFL's
"first channels of every layer" sub-model (the shared stem, shortcut and head stay whole). Because
prefix slices of different widths nest, averaging module groups over the devices that hold them
(``merge_module_updates(..., weighting="samples")``) is HeteroFL's overlap averaging.
"""

from __future__ import annotations

from eclm.modules import CostTable, DeviceProfile, SubModelSpec, fits


def prefix_spec(model_id: str, layer_sizes: list[int], groups: int, of: int) -> SubModelSpec:
    """The slice keeping ``groups / of`` of every layer's modules (at least one per layer).

    Args:
        model_id: The modular model's fingerprint.
        layer_sizes: Modules per layer.
        groups: Width numerator ``j``, ``1 <= j <= of``.
        of: Width denominator (the largest layer size).

    Raises:
        ValueError: If ``groups`` is outside ``1..of``.
    """
    if not 1 <= groups <= of:
        raise ValueError(f"groups must lie in 1..{of}, got {groups}")
    keep = [max(1, min(n, round(groups * n / of))) for n in layer_sizes]
    return SubModelSpec(model_id=model_id, groups=[tuple(range(k)) for k in keep])


def widest_prefix_within(costs: CostTable, model_id: str, layer_sizes: list[int], budget: DeviceProfile) -> SubModelSpec:
    """The widest width-prefix slice satisfying every limit of ``budget``.

    Raises:
        ValueError: If even the narrowest slice exceeds the budget (the message names the device).
    """
    of = max(layer_sizes)
    for j in range(of, 0, -1):
        spec = prefix_spec(model_id, layer_sizes, j, of)
        if fits(costs, spec, budget):
            return spec
    raise ValueError(f"device {budget.name!r}: no width-prefix slice fits its budget {budget.limits()}")


def prefix_width(spec: SubModelSpec, layer_sizes: list[int]) -> float:
    """Kept share of the modules, ``sum |groups| / sum N`` (1.0 for the full model)."""
    return spec.num_modules() / max(sum(layer_sizes), 1)
