"""Figure of a serving session: throughput over time with re-partition and node-change markers.

Built as a bare :class:`matplotlib.figure.Figure` on the Agg canvas (no pyplot, no display), the
same way as :mod:`eclm.tracking.plots`, so the platform can log it to MLflow and benchmarks can
save it. matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_MARKERS = {"repartition": ("tab:green", "--", "re-partition"), "cpu_share": ("tab:red", ":", "node change"),
            "replace": ("tab:purple", "-.", "stage replaced")}


def throughput_over_time(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    events: Mapping[str, Sequence[tuple[float, str]]] | None = None,
    title: str = "Throughput over time",
    ylabel: str = "completed requests / s (wall clock)",
) -> Figure:
    """Line per series of throughput against time, with vertical lines at events.

    Args:
        series: ``{label: (times_s, requests_per_s)}``, times relative to the session start.
        events: ``{label: [(time_s, kind), ...]}`` with ``kind`` in ``repartition``,
            ``cpu_share``, ``replace``; drawn in the colour of the series they belong to.
        title: Figure title.
        ylabel: Y-axis label.

    Returns:
        The figure (save with ``fig.savefig(path)``).

    Raises:
        ValueError: If ``series`` is empty or a series' lists differ in length.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not series:
        raise ValueError("series must hold at least one (times, values) pair")
    fig = Figure(figsize=(7.5, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = {}
    for label, (times, values) in series.items():
        if len(times) != len(values):
            raise ValueError(f"series {label!r}: {len(times)} times but {len(values)} values")
        (line,) = ax.plot(list(times), list(values), marker=".", label=label)
        colours[label] = line.get_color()
    seen: set[tuple[str, str]] = set()
    for label, marks in (events or {}).items():
        for t, kind in marks:
            _, style, name = _MARKERS.get(kind, ("grey", ":", kind))
            legend = f"{name} ({label})" if (label, kind) not in seen else None
            seen.add((label, kind))
            ax.axvline(t, color=colours.get(label, "grey"), linestyle=style, linewidth=1.2, label=legend)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    return fig
