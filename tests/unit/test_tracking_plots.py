"""Campaign figures: one line style per phase per device, heatmap grid shape, input checks, PNG output."""

from __future__ import annotations

import io

import numpy as np
import pytest

from eclm.tracking import accuracy_over_rounds, close_figure, module_usage_heatmap

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def history_of(devices: int, rounds: int) -> dict[str, list[tuple[int, float, float]]]:
    rng = np.random.default_rng(devices * 10 + rounds)
    return {f"d{d}": [(r, *sorted(rng.random(2))) for r in range(rounds)] for d in range(devices)}


@pytest.mark.parametrize(("devices", "rounds", "with_cloud"), [(1, 1, False), (3, 5, True), (12, 2, False)])
def test_accuracy_plot_has_a_dashed_and_a_solid_line_per_device(devices, rounds, with_cloud):
    cloud = [(r, 0.5 + 0.01 * r) for r in range(rounds)] if with_cloud else None

    fig = accuracy_over_rounds(history_of(devices, rounds), cloud)
    lines = fig.axes[0].get_lines()

    assert sum(line.get_linestyle() == "--" for line in lines) == devices
    assert sum(line.get_linestyle() == "-" for line in lines) == devices + int(with_cloud)
    for before, after in zip(lines[0 : 2 * devices : 2], lines[1 : 2 * devices : 2], strict=True):
        assert before.get_color() == after.get_color()
        assert list(before.get_xdata()) == list(range(rounds))
    close_figure(fig)


@pytest.mark.parametrize(("devices", "rounds"), [(1, 1), (4, 5), (13, 3)])
def test_accuracy_plot_has_integer_round_ticks_and_its_legend_beside_the_axes(devices, rounds):
    fig = accuracy_over_rounds(history_of(devices, rounds), [(r, 0.5) for r in range(rounds)])
    fig.canvas.draw()
    axes = fig.axes[0]
    axes_box, legend_box = axes.get_window_extent(), axes.get_legend().get_window_extent()

    assert all(float(tick).is_integer() for tick in axes.get_xticks())
    assert legend_box.x0 >= axes_box.x1  # right of the plotting area: it covers no line
    assert legend_box.x1 <= fig.bbox.x1  # and still inside the figure
    close_figure(fig)


def test_accuracy_plot_sorts_rounds():
    fig = accuracy_over_rounds({"d0": [(2, 0.1, 0.2), (0, 0.3, 0.4), (1, 0.5, 0.6)]})

    assert list(fig.axes[0].get_lines()[1].get_ydata()) == [0.4, 0.6, 0.2]
    close_figure(fig)


def test_unmeasured_accuracies_become_gaps():
    fig = accuracy_over_rounds({"d0": [(0, None, 0.4), (1, 0.5, None)]})
    before, after = fig.axes[0].get_lines()[:2]

    assert np.isnan(before.get_ydata()[0]) and before.get_ydata()[1] == 0.5
    assert after.get_ydata()[0] == 0.4 and np.isnan(after.get_ydata()[1])
    close_figure(fig)


@pytest.mark.parametrize(
    ("history", "match"),
    [
        ({}, "nothing to plot"),
        ({"d0": [(0, 0.5)]}, r"history\['d0'\]\[0\]"),
        ({"d0": [(None, 0.5, 0.6)]}, r"history\['d0'\]\[0\]"),
    ],
)
def test_accuracy_plot_rejects_bad_history(history, match):
    with pytest.raises(ValueError, match=match):
        accuracy_over_rounds(history)


@pytest.mark.parametrize("widths", [[3, 3], [4, 2, 1], [1]])
def test_heatmap_grid_matches_layers_and_leaves_missing_modules_blank(widths):
    usage = [[(i + j) / 10 for j in range(width)] for i, width in enumerate(widths)]

    fig = module_usage_heatmap(usage, [f"layer{i}" for i in range(len(widths))])
    grid = fig.axes[0].images[0].get_array()

    assert grid.shape == (len(widths), max(widths))
    for i, width in enumerate(widths):
        assert list(grid[i, :width]) == usage[i]
        assert bool(np.all(grid.mask[i, width:]))
    close_figure(fig)


@pytest.mark.parametrize(
    ("usage", "layers", "modules", "match"),
    [
        ([], [], None, "usage is empty"),
        ([[0.1]], ["a", "b"], None, "layer_names"),
        ([[0.1], []], ["a", "b"], None, "no modules"),
        ([[float("nan")]], ["a"], None, "non-finite"),
        ([[0.1, 0.2]], ["a"], ["m0"], "module_names"),
    ],
)
def test_heatmap_rejects_bad_input(usage, layers, modules, match):
    with pytest.raises(ValueError, match=match):
        module_usage_heatmap(usage, layers, modules)


@pytest.mark.parametrize(
    "build", [lambda: accuracy_over_rounds(history_of(2, 3)), lambda: module_usage_heatmap([[0.5]], ["l"])]
)
def test_figures_render_to_png_without_a_display(build):
    fig = build()
    buffer = io.BytesIO()

    fig.savefig(buffer, format="png")

    assert buffer.getvalue().startswith(PNG_MAGIC)
    close_figure(fig)
    assert fig.axes == []


def test_many_devices_are_summarised_by_their_mean_and_the_plot_still_lays_out():
    import warnings

    history = {f"dev{i:03d}": [(r, 0.1 * (i % 5), 0.5 + 0.01 * (i % 7)) for r in range(1, 4)] for i in range(60)}
    history["dev000"] = [(1, None, 0.6), (2, 0.2, None), (3, 0.3, 0.7)]
    figure = accuracy_over_rounds(history, cloud_accuracy=[(1, 0.9), (2, 0.91), (3, 0.92)])
    axes = figure.axes[0]
    labels = [t.get_text() for t in axes.get_legend().get_texts()]
    assert labels == ["mean of 60 devices", "cloud (val)", "before adaptation", "after adaptation"]
    mean_after = next(line for line in axes.get_lines() if line.get_label().startswith("mean of"))
    expected = np.mean([h[0][2] for h in history.values() if h[0][2] is not None])
    assert mean_after.get_ydata()[0] == pytest.approx(expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "constrained_layout not applied" with a 60-entry legend
        figure.savefig(io.BytesIO(), format="png", dpi=60)
    close_figure(figure)
