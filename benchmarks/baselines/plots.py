"""Accuracy-over-cycles figures of the adaptation benchmark (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # benchmarks run headless
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

_PANELS = (("acc_after", "after adaptation, 10-way"), ("acc_after_dev", "after adaptation, device's classes"),
           ("acc_before", "on arrival (before adapting), 10-way"))


def plot_accuracy_over_cycles(summary: dict, labels: dict[str, str], title: str, path: Path) -> Path:
    """One panel per accuracy kind; a line per method (mean over seeds), band = ± std over seeds.

    Args:
        summary: :func:`~benchmarks.baselines.summary.setting_summary` of one setting.
        labels: Display name per method key.
        title: Figure title.
        path: PNG to write.

    Returns:
        ``path``.
    """
    fig, axes = plt.subplots(1, len(_PANELS), figsize=(4.2 * len(_PANELS), 3.6), constrained_layout=True,
                             sharey=True)
    for ax, (key, name) in zip(axes, _PANELS, strict=True):
        for method, entry in summary["methods"].items():
            curve = entry["curves"][key]
            xs = [i + 1 for i, c in enumerate(curve) if c["mean"] is not None]
            mean = [c["mean"] for c in curve if c["mean"] is not None]
            std = [c["std"] for c in curve if c["mean"] is not None]
            line, = ax.plot(xs, mean, marker="o", markersize=3, label=labels.get(method, method))
            ax.fill_between(xs, [m - s for m, s in zip(mean, std, strict=True)],
                            [m + s for m, s in zip(mean, std, strict=True)], color=line.get_color(), alpha=0.15)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("cycle (one new environment each)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("accuracy on the device's current environment")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
