"""Suite ``modules``: the modular core's sub-models — size, speed, exactness, selection quality.

Part 1 (compression): resnet18, a ViT-tiny at 32x32 with 4x4 patches, and convnext_atto, 4
modules per layer. For parameter budgets of 25/50/75/100% the derived and extracted sub-model's
parameters, FLOPs, activation memory and CPU images/s relative to the full model, the derivation
solve time, and reconstruction errors.

Part 2 (selection): on the digits data after offline training, a derived sub-model for a 2-class
device versus a HeteroFL-style width-prefix slice with the same parameter budget.
"""

from __future__ import annotations

from pathlib import Path

import psutil

from benchmarks.modular.compression import run_compression
from benchmarks.modular.config import ModulesBenchConfig
from benchmarks.modular.plots import plot_compression, plot_selection
from benchmarks.modular.selection import VARIANTS, run_selection
from benchmarks.registry import register_suite
from benchmarks.report import Table


@register_suite("modules")
def modules_suite(mode: str, out_dir: Path) -> dict:
    """Modular core: sub-model params/FLOPs/speed per budget, exactness, derived vs width-prefix accuracy."""
    return run_modules_benchmark(ModulesBenchConfig.for_mode(mode), out_dir)


def run_modules_benchmark(config: ModulesBenchConfig, out_dir: Path | None = None) -> dict:
    """Run both parts and build the suite result.

    Args:
        config: What to measure (see :meth:`ModulesBenchConfig.for_mode` and ``.tiny``).
        out_dir: Where to write the PNG plots; ``None`` skips the plots.

    Returns:
        ``{"tables", "plots", "summary", "config", "compression", "selection", "rss_mib"}``.
    """
    compression = run_compression(config.compression)
    selection = run_selection(config.selection)
    finetuned = config.selection.finetune_epochs > 0
    plots = []
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        plot_compression(compression["points"], out_dir / "modules_budget_ratios.png")
        plot_selection(selection["aggregate"], out_dir / "modules_digits_accuracy.png", finetuned)
        plots = ["modules_budget_ratios.png", "modules_digits_accuracy.png"]
    return {
        "tables": [
            _backbone_table(compression, config).to_dict(),
            _budget_table(compression, config).to_dict(),
            _selection_table(selection, config).to_dict(),
        ],
        "plots": plots,
        "summary": _summary(compression, selection, finetuned),
        "config": config.model_dump(mode="json"),
        "compression": compression,
        "selection": selection,
        "rss_mib": round(psutil.Process().memory_info().rss / 2**20, 1),
    }


def _backbone_table(compression: dict, config: ModulesBenchConfig) -> Table:
    c = config.compression
    rows = [
        [b["model"], b["timm_name"], b["module_layers"], "/".join(map(str, b["modules_per_layer"])),
         b["params"] / 1e6, b["mflops_per_image"], b["images_per_s"], b["reconstruction_rel_error"],
         b["cost_table_seconds"]]
        for b in compression["backbones"]
    ]
    return Table(
        "Full models (input 3x32x32, random init)",
        ["model", "timm name", "module layers", "modules per layer", "params (M)", "MFLOPs / image",
         f"images/s (batch {c.batch_size})", "reconstruction rel. max error", "cost table (s)"],
        rows,
        notes=("Reconstruction error: max |source - extract(full spec)| / max |source| on a random batch, "
               "source = the untouched timm model. Attention layers get one module per head when a model "
               "has fewer heads than modules per layer. FLOPs count a multiply-add as 2 "
               "(torch.utils.flop_counter)."),
    )


def _budget_table(compression: dict, config: ModulesBenchConfig) -> Table:
    c = config.compression
    rows = [
        [p["model"], p["fraction"], f"{p['modules_kept']}/{p['modules_total']}", p["params_ratio"],
         p["flops_ratio"], p["activation_ratio"], p["throughput_ratio"], p["solve_ms"], p["gated_rel_error"]]
        for p in compression["points"]
    ]
    return Table(
        "Extracted sub-models by parameter budget (ratios to the full model)",
        ["model", "budget (params)", "modules kept", "params", "FLOPs", "activations", "images/s",
         "solve (ms)", "sub vs gated rel. err"],
        rows,
        notes=(f"Importance: the selector's mean probability on {c.importance_samples} random inputs "
               "(uniform at initialisation, so the knapsack keeps as many modules as fit: it drops the "
               "parameter-heavy late-stage modules first, which at 32x32 cost few FLOPs, so for the CNNs "
               "FLOPs fall more slowly than parameters). Params, FLOPs "
               "and activation bytes are measured on the extracted nn.Module. images/s: batch "
               f"{c.batch_size}, eval, no_grad, median of {c.repeats} timed samples after {c.warmup} warm-up "
               "passes, models timed interleaved. 'sub vs gated': extracted sub-model versus the modular "
               "model gated to the same spec. Solve: scipy.optimize.milp (HiGHS) incl. the feasibility "
               "check."),
    )


def _selection_table(selection: dict, config: ModulesBenchConfig) -> Table:
    s = config.selection
    agg = selection["aggregate"]
    metrics = ["acc_all", "acc_device"] + (["ft_acc_all", "ft_acc_device"] if s.finetune_epochs else [])
    rows = [
        [name, round(agg[name]["params"]["mean"]), agg[name]["params_ratio"]["mean"], agg[name]["modules"]["mean"]]
        + [_pm(agg[name][m]) for m in metrics]
        for name in VARIANTS
    ]
    labels = ["acc 10-way", "acc 2-way"] + (["fine-tuned acc 10-way", "fine-tuned acc 2-way"]
                                            if s.finetune_epochs else [])
    width = "real widths" if s.channels is None else f"channels={tuple(s.channels)}"
    first = selection["seeds"][0]
    ft = (f" Fine-tune: {s.finetune_epochs} epochs SGD lr {s.finetune_lr} momentum {s.finetune_momentum}, "
          f"batch {s.finetune_batch_size}, cross-entropy over all 10 logits, same batches for every variant."
          if s.finetune_epochs else
          " No fine-tuning in this mode.")
    return Table(
        f"Digits, device with classes {tuple(s.device_classes)}: derived sub-model vs width-prefix slice",
        ["variant", "params", "params / full", "modules"] + labels,
        rows,
        notes=(f"Modular resnet18 ({width}), {s.modules_per_layer} modules per layer, trained offline "
               f"({s.epochs}+{s.enhance_epochs} epochs) on the 30% proxy share of sklearn digits (32x32, 3 ch). "
               f"Device: its classes in the 70% device share, {first['device_train']} train / "
               f"{first['device_test']} test samples (seed 0). Budget = parameters of the "
               f"{s.prefix_groups}/{s.modules_per_layer}-width prefix; the derived sub-model (importance "
               "from the device's train samples) uses at most that, the prefix exactly that. "
               "10-way: argmax over all logits; 2-way: argmax over the device's two classes. "
               f"Mean ± std over {s.seeds} seeds (data split, init, training)." + ft),
    )


def _summary(compression: dict, selection: dict, finetuned: bool) -> list[str]:
    lines = []
    for b in compression["backbones"]:
        half = min((p for p in compression["points"] if p["model"] == b["model"]),
                   key=lambda p: abs(p["fraction"] - 0.5))
        lines.append(
            f"{b['model']} at a {half['fraction']:.0%} parameter budget: {half['params_ratio']:.2f}x params, "
            f"{half['flops_ratio']:.2f}x FLOPs, {half['throughput_ratio']:.2f}x images/s of the full model; "
            f"full extraction error {b['reconstruction_rel_error']:.1e}."
        )
    agg = selection["aggregate"]
    d, w = agg[VARIANTS[1]], agg[VARIANTS[2]]
    lines.append(
        f"Digits 2-class device, no fine-tune: derived {_pm(d['acc_all'])} vs width prefix "
        f"{_pm(w['acc_all'])} (10-way), {_pm(d['acc_device'])} vs {_pm(w['acc_device'])} (2-way), "
        f"at {d['params_ratio']['mean']:.2f} vs {w['params_ratio']['mean']:.2f} of the full params."
    )
    if finetuned:
        lines.append(f"After fine-tuning: derived {_pm(d['ft_acc_all'])} vs width prefix {_pm(w['ft_acc_all'])} (10-way).")
    return lines


def _pm(stat: dict) -> str:
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"
