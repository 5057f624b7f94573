"""Extracted sub-model size and speed versus parameter budget, per backbone.

For each backbone and budget fraction f of the full model's parameters: score the modules with
the selector on random inputs, derive the sub-model (``max_params = f * full``), extract it and
measure what it really costs: parameter count, FLOPs (``torch.utils.flop_counter``) and CPU
images/s relative to the full timm model, plus how far the extracted sub-model's output is from
the gated modular model it was cut from. The full extraction's output is also compared with the
untouched source timm model (the decomposition must be exact).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import timm
import torch
from torch import Tensor, nn

from benchmarks.modular.config import BackboneCase, CompressionSettings
from benchmarks.timing import interleaved_throughput
from eclm.modules import DeviceProfile, ModularModel, derive_submodel, modularize
from eclm.modules.costs import measure


@dataclass
class BudgetPoint:
    """One derived sub-model of one backbone (ratios are to the full model).

    ``timing_spread`` is the interquartile range of its seconds per batch over the median.
    """

    model: str
    fraction: float
    modules_kept: int
    modules_total: int
    params: int
    params_ratio: float
    flops_ratio: float
    activation_ratio: float
    throughput_ratio: float
    images_per_s: float
    timing_spread: float
    solve_ms: float
    gated_rel_error: float


@dataclass
class BackboneSummary:
    """The full model of one backbone."""

    model: str
    timm_name: str
    timm_kwargs: dict
    module_layers: int
    modules_per_layer: list[int]
    params: int
    mflops_per_image: float
    images_per_s: float
    reconstruction_rel_error: float
    cost_table_seconds: float


def relative_max_error(reference: Tensor, other: Tensor) -> float:
    """``max |reference - other| / max |reference|`` (0 when both are zero)."""
    scale = reference.abs().max().clamp_min(1e-12)
    return float((reference - other).abs().max() / scale)


def measure_backbone(case: BackboneCase, s: CompressionSettings) -> tuple[BackboneSummary, list[BudgetPoint]]:
    """Derive, extract and measure sub-models of one backbone at every budget fraction.

    Args:
        case: The timm model to decompose.
        s: Compression settings (budgets, timing repeats, batch size).

    Returns:
        The full model's summary and one :class:`BudgetPoint` per fraction.
    """
    torch.manual_seed(s.seed)
    source = timm.create_model(case.timm_name, pretrained=False, **case.timm_kwargs).eval()
    modular: ModularModel = modularize(copy.deepcopy(source), modules_per_layer=s.modules_per_layer,
                                       input_size=s.input_size).eval()
    t0 = time.perf_counter()
    costs = modular.costs()
    cost_seconds = time.perf_counter() - t0
    full_spec = modular.full_spec()
    full_cost = costs.total(full_spec)
    gen = torch.Generator().manual_seed(s.seed)
    # The selector starts uniform, so importance from random inputs is (near) uniform: the
    # knapsack then keeps as many modules as fit, which is the neutral choice for a size study.
    importance = modular.importance(torch.rand(s.importance_samples, *s.input_size, generator=gen))
    batch = torch.rand(s.batch_size, *s.input_size, generator=gen)
    example = batch[:1]
    with torch.no_grad():
        reference = source(batch)
        full_sub = modular.extract(full_spec).eval()
        reconstruction = relative_max_error(reference, full_sub(batch))
    full_measured = measure(source, example)

    specs, subs, solve_ms = {}, {}, {}
    for f in s.fractions:
        t0 = time.perf_counter()
        spec = derive_submodel(modular, importance, DeviceProfile(name=f"{case.label}@{f}",
                                                                  max_params=f * full_cost["params"]))
        solve_ms[f] = 1e3 * (time.perf_counter() - t0)
        specs[f], subs[f] = spec, modular.extract(spec).eval()
    timed: dict[str, nn.Module] = {"full": source} | {f"f={f}": subs[f] for f in s.fractions}
    speed = interleaved_throughput(timed, batch, repeats=s.repeats, warmup=s.warmup,
                                   min_sample_seconds=s.min_sample_seconds)

    points = []
    for f in s.fractions:
        sub, spec, timing = subs[f], specs[f], speed[f"f={f}"]
        measured = measure(sub, example)
        with torch.no_grad():
            gated = modular(batch, modular.spec_gates(spec, len(batch)))
            gated_err = relative_max_error(gated, sub(batch))
        points.append(BudgetPoint(
            model=case.label,
            fraction=f,
            modules_kept=spec.num_modules(),
            modules_total=full_spec.num_modules(),
            params=int(measured[0]),
            params_ratio=float(measured[0] / full_measured[0]),
            flops_ratio=float(measured[1] / full_measured[1]),
            activation_ratio=float(measured[2] / full_measured[2]),
            throughput_ratio=timing.images_per_s / speed["full"].images_per_s,
            images_per_s=timing.images_per_s,
            timing_spread=(timing.q75_s - timing.q25_s) / timing.median_s,
            solve_ms=solve_ms[f],
            gated_rel_error=gated_err,
        ))
    summary = BackboneSummary(
        model=case.label,
        timm_name=case.timm_name,
        timm_kwargs=dict(case.timm_kwargs),
        module_layers=len(modular.layers),
        modules_per_layer=sorted(set(modular.layer_sizes)),
        params=int(full_measured[0]),
        mflops_per_image=float(full_measured[1] / 1e6),
        images_per_s=speed["full"].images_per_s,
        reconstruction_rel_error=reconstruction,
        cost_table_seconds=cost_seconds,
    )
    return summary, points


def run_compression(s: CompressionSettings) -> dict:
    """Run :func:`measure_backbone` for every configured backbone.

    Returns:
        ``{"backbones": [BackboneSummary as dict], "points": [BudgetPoint as dict]}``.
    """
    summaries, points = [], []
    for case in s.backbones:
        summary, pts = measure_backbone(case, s)
        summaries.append(asdict(summary))
        points += [asdict(p) for p in pts]
    return {"backbones": summaries, "points": points}
