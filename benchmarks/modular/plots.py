"""Figures of the modular-core benchmark (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless CI and Ray workers have no display
import matplotlib.pyplot as plt  # noqa: E402

_RATIOS = (("params_ratio", "parameters"), ("flops_ratio", "FLOPs"), ("throughput_ratio", "CPU images/s"))


def plot_compression(points: list[dict], path: Path) -> Path:
    """Three panels (parameters, FLOPs, throughput ratio) against the budget fraction, one line per model."""
    models = list(dict.fromkeys(p["model"] for p in points))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), constrained_layout=True)
    for ax, (key, label) in zip(axes, _RATIOS, strict=True):
        for model in models:
            pts = sorted((p for p in points if p["model"] == model), key=lambda p: p["fraction"])
            ax.plot([p["fraction"] for p in pts], [p[key] for p in pts], marker="o", label=model)
        if key == "throughput_ratio":
            ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)  # as fast as the full model
        else:
            ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)  # exactly proportional
        ax.set_xlabel("parameter budget (fraction of full)")
        ax.set_title(f"{label} / full model")
        ax.set_xlim(0, 1.05)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_selection(aggregate: dict, path: Path, finetuned: bool) -> Path:
    """Bars of the device accuracy per variant (mean, error bar = std over seeds)."""
    variants = list(aggregate)
    metrics = [("acc_all", "no fine-tune, 10-way"), ("acc_device", "no fine-tune, 2-way")]
    if finetuned:
        metrics += [("ft_acc_all", "fine-tuned, 10-way"), ("ft_acc_device", "fine-tuned, 2-way")]
    fig, ax = plt.subplots(figsize=(8, 3.6), constrained_layout=True)
    width = 0.8 / len(variants)
    for i, name in enumerate(variants):
        xs = [m + (i - (len(variants) - 1) / 2) * width for m in range(len(metrics))]
        means = [aggregate[name][key]["mean"] for key, _ in metrics]
        stds = [aggregate[name][key]["std"] for key, _ in metrics]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=name)
    ax.set_xticks(range(len(metrics)), [label for _, label in metrics])
    ax.set_ylabel("accuracy on the device's test samples")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
