"""Campaign figures: per-device accuracy over rounds and per-layer module usage.

Figures are built as bare :class:`matplotlib.figure.Figure` objects rendered with the Agg canvas,
never through ``pyplot``: no display is needed, no global backend is switched, and figures are not
kept alive by pyplot's registry (a long campaign plotting every round would otherwise leak them).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

#: Above this many devices the accuracy plot draws them faintly and labels only their mean.
MAX_LABELLED_DEVICES = 12


def _mean(values: Sequence[float | None]) -> float:
    known = [v for v in values if v is not None and not math.isnan(v)]
    return sum(known) / len(known) if known else float("nan")


def _new_figure(width_in: float, height_in: float) -> Figure:
    figure = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(figure)  # attaches itself to the figure; PNG rendering without a display
    return figure


def accuracy_over_rounds(
    history: Mapping[str, Sequence[tuple[int, float, float]]],
    cloud_accuracy: Sequence[tuple[int, float]] | None = None,
    title: str = "Accuracy over rounds",
) -> Figure:
    """Plot each device's accuracy before (dashed) and after (solid) adaptation, per round.

    A device keeps one colour for both lines, so the gap between its dashed and solid line is the
    gain of adaptation in that round. Rounds are integers, so the x axis only has integer ticks;
    the legend sits to the right of the axes, never over the lines.

    Args:
        history: ``{device: [(round, acc_before, acc_after), ...]}``; accuracies in any consistent
            unit (fraction or percent), ``None`` where not measured (drawn as a gap); rounds need not
            be contiguous or sorted.
        cloud_accuracy: Optional ``[(round, validation_accuracy), ...]`` of the cloud model, drawn
            as a black line.
        title: Figure title.

    Returns:
        The figure (close it with :func:`close` once logged).

    Raises:
        ValueError: If there is nothing to plot, or an entry is not a ``(round, before, after)``
            triple (names the device and entry index).
    """
    if not history and not cloud_accuracy:
        raise ValueError("history is empty and no cloud_accuracy given: nothing to plot")
    figure = _new_figure(8.5, 4.0)  # wider: the legend takes a column right of the axes
    axes = figure.add_subplot()
    palette = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    crowded = len(history) > MAX_LABELLED_DEVICES
    per_round: dict[int, list[tuple[float | None, float | None]]] = {}
    for index, (device, entries) in enumerate(history.items()):
        rows = sorted(_checked_rows(f"history[{device!r}]", entries, width=3))
        rounds = [row[0] for row in rows]
        for row in rows:
            per_round.setdefault(row[0], []).append((row[1], row[2]))
        colour = "grey" if crowded else palette[index % len(palette)]
        faint = 0.25 if crowded else 0.7
        axes.plot(rounds, [row[1] for row in rows], linestyle="--", marker=".", color=colour, alpha=faint)
        axes.plot(rounds, [row[2] for row in rows], linestyle="-", marker="" if crowded else "o", color=colour,
                  alpha=faint if crowded else 1.0, label=None if crowded else str(device))
    if crowded:  # too many devices to tell apart: their mean carries the legend
        rounds = sorted(per_round)
        for column, style in ((0, "--"), (1, "-")):
            means = [_mean([pair[column] for pair in per_round[r]]) for r in rounds]
            axes.plot(rounds, means, linestyle=style, marker="o", color="tab:blue", linewidth=2.0,
                      label=f"mean of {len(history)} devices" if column == 1 else None)
    if cloud_accuracy:
        rows = sorted(_checked_rows("cloud_accuracy", cloud_accuracy, width=2))
        axes.plot(
            [r[0] for r in rows], [r[1] for r in rows], color="black", linewidth=2.0, label="cloud (val)"
        )
    _label_accuracy_axes(axes, title)
    return figure


def _label_accuracy_axes(axes, title: str) -> None:
    """Legend beside the axes (never over a line), integer round ticks, labels, grid."""
    # Proxy entries explain the line styles once instead of doubling every device's legend entry.
    style_handles = [
        Line2D([], [], color="grey", linestyle="--", label="before adaptation"),
        Line2D([], [], color="grey", linestyle="-", label="after adaptation"),
    ]
    handles, _ = axes.get_legend_handles_labels()
    axes.legend(handles=handles + style_handles, fontsize="small", loc="upper left",
                bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axes.set_xlabel("round")
    axes.set_ylabel("accuracy")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)


def module_usage_heatmap(
    usage: Sequence[Sequence[float]],
    layer_names: Sequence[str],
    module_names: Sequence[str] | None = None,
    title: str = "Module usage",
) -> Figure:
    """Heatmap of how often each module of each layer is used (layers as rows, modules as columns).

    Layers may have different module counts; missing cells are left blank.

    Args:
        usage: ``usage[layer][module]``, e.g. the fraction of devices whose sub-model keeps the module.
        layer_names: One label per layer (row), ``len(layer_names) == len(usage)``.
        module_names: Optional column labels, one per column of the widest layer; default ``m0, m1, ...``.
        title: Figure title.

    Returns:
        The figure (close it with :func:`close` once logged).

    Raises:
        ValueError: If ``usage`` is empty, a layer has no modules, a value is not finite, or the
            label counts do not match the grid.
    """
    if len(usage) == 0:
        raise ValueError("usage is empty: need at least one layer")
    if len(layer_names) != len(usage):
        raise ValueError(f"layer_names has {len(layer_names)} labels but usage has {len(usage)} layers")
    width = max(len(row) for row in usage)
    grid = np.full((len(usage), width), np.nan)
    for index, row in enumerate(usage):
        if len(row) == 0:
            raise ValueError(f"usage[{index}] ({layer_names[index]!r}) has no modules")
        values = [float(value) for value in row]
        if not all(math.isfinite(value) for value in values):
            raise ValueError(f"usage[{index}] ({layer_names[index]!r}) has non-finite values: {values}")
        grid[index, : len(values)] = values
    if module_names is None:
        module_names = [f"m{column}" for column in range(width)]
    elif len(module_names) != width:
        raise ValueError(
            f"module_names has {len(module_names)} labels but the widest layer has {width} modules"
        )

    figure = _new_figure(max(4.0, 0.6 * width + 2.5), max(3.0, 0.4 * len(usage) + 1.5))
    axes = figure.add_subplot()
    image = axes.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap="viridis", interpolation="nearest")
    axes.set_xticks(range(width), labels=[str(name) for name in module_names], rotation=45, ha="right")
    axes.set_yticks(range(len(usage)), labels=[str(name) for name in layer_names])
    axes.set_xlabel("module")
    axes.set_ylabel("layer")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, label="usage")
    return figure


def close(fig: Figure) -> None:
    """Release a figure's artists (and drop it from pyplot if pyplot happens to manage it)."""
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close(fig)
    fig.clear()


def _checked_rows(
    field: str, entries: Sequence[Sequence[float | None]], width: int
) -> list[tuple[float, ...]]:
    rows = []
    for index, entry in enumerate(entries):
        if len(entry) != width or entry[0] is None:
            raise ValueError(
                f"{field}[{index}] must be (round, {', '.join(['accuracy'] * (width - 1))}), got {entry!r}"
            )
        # An accuracy that was not measured (None) becomes a gap in its line rather than an error.
        rows.append(tuple(math.nan if value is None else float(value) for value in entry))
    return rows
