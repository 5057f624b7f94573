"""Suite ``split``: split learning for weak devices — EdgeSplit cuts, GPSL sampling, MS compression.

Every part trains through the platform's one split protocol:
:func:`eclm.campaign.split_round.run_split_round` driving the cloud's and the devices' ``split_*``
service methods, on the platform's modular ResNet-18 (widths 16/32/64/128) over sklearn digits at
16x16 grey, with the devices' data from the platform's partition.

Part 1 (EdgeSplit, ``_split_edgesplit.py``): EdgeSplit with the epoch objective and with the paper's
per-iteration objective, brute force, a uniform cut and the best common cut, with a 2x and a 10x
compute spread, timed by the delay model on real split rounds; emits the suite's targets.

Part 2 (GPSL, ``_split_gpsl.py``): severe non-IID (2 classes per device, uneven sizes), cut after
the stem: GPSL global sampling vs fixed-equal vs fixed-proportional local batches vs centralised;
test accuracy at equal epochs, mean ± std over seeds.

Part 3 (MS, ``_split_codecs.py``): cuts after the stem / ``layer1`` / ``layer2``; Mask-Encoded
Sparsification, top-k, randomised top-k and uniform quantisation at several levels; the largest
traffic saving that still reaches the uncompressed accuracy.

Part 4 (Ray): the GPSL setting on real Ray actors (``RayFleet``, local Ray on loopback) beside the
same round in-process, wall time beside the delay model's emulated time.

``ECLM_BENCH_SPLIT_PARTS`` (comma-separated subset of ``edgesplit,gpsl,codecs,ray``; default all)
runs only some parts, e.g. to check one part's numbers without the others.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from benchmarks.registry import register_suite
from benchmarks.suites._split_codecs import CODECS, CUTS, run_codecs
from benchmarks.suites._split_edgesplit import run_edgesplit
from benchmarks.suites._split_gpsl import run_gpsl, run_gpsl_on_ray

_PARTS = ("edgesplit", "gpsl", "codecs", "ray")


@dataclass(frozen=True)
class SplitBenchConfig:
    """What each mode runs (the budget of every part)."""

    max_epochs: int = 6  # part 1: training epochs of every plan
    target: float = 0.9  # part 1: target test accuracy
    gpsl_clients: tuple[int, ...] = (16,)
    gpsl_epochs: int = 4
    gpsl_seeds: int = 2
    codec_cuts: tuple[str, ...] = ("shallow", "deep")
    codec_epochs: int = 4
    codec_seeds: int = 1
    codec_levels: tuple[tuple[str, tuple], ...] = (
        ("mask_encoded", (0.9, 0.99)), ("topk", (0.9, 0.95)), ("randomized_topk", (0.9, 0.95)),
        ("uniform_quantization", (4, 2)))
    codec_tolerance: float = 0.01
    ray_clients: int = 4  # part 4: devices of the GPSL round on Ray actors (0: skip the part)
    ray_epochs: int = 2
    train_samples: int | None = None  # cap on the training images of a setting (None: the whole reservoir)

    @classmethod
    def for_mode(cls, mode: str) -> SplitBenchConfig:
        """The budget of ``"quick"``, ``"full"`` or ``"smoke"`` (seconds: every code path once, no Ray)."""
        if mode == "quick":
            return cls()
        if mode == "smoke":
            return replace(cls(), max_epochs=1, gpsl_clients=(4,), gpsl_epochs=1, gpsl_seeds=1,
                           codec_cuts=("shallow",), codec_epochs=1, ray_clients=0, train_samples=160,
                           codec_levels=tuple((name, levels[-1:]) for name, levels in cls().codec_levels))
        levels = (("mask_encoded", (0.9, 0.95, 0.99)), ("topk", (0.75, 0.9, 0.95)),
                  ("randomized_topk", (0.75, 0.9, 0.95)), ("uniform_quantization", (4, 3, 2)))
        return replace(cls(), max_epochs=12, gpsl_clients=(16, 64), gpsl_epochs=6, gpsl_seeds=3,
                       codec_cuts=tuple(CUTS), codec_epochs=6, codec_seeds=2, codec_levels=levels)


@register_suite("split", num_threads=1)
def split_suite(mode: str, out_dir: Path) -> dict:
    """Split learning: EdgeSplit vs uniform/common cuts, GPSL vs fixed local batches, MS vs other codecs."""
    cfg = SplitBenchConfig.for_mode(mode)
    parts = _selected_parts(cfg)
    out: dict = {"tables": [], "plots": [], "summary": [], "targets": [], "config": asdict(cfg),
                 "parts": list(parts), "part_seconds": {}, "load_average": {"start": os.getloadavg()}}
    with tempfile.TemporaryDirectory(prefix="eclm-split-bench-") as workdir:
        runs = {
            "edgesplit": lambda: run_edgesplit(cfg.max_epochs, cfg.target, workdir, cfg.train_samples),
            "gpsl": lambda: run_gpsl(cfg.gpsl_clients, cfg.gpsl_epochs, cfg.gpsl_seeds, workdir, cfg.train_samples),
            "codecs": lambda: run_codecs(cfg.codec_cuts, cfg.codec_levels, cfg.codec_epochs, cfg.codec_seeds,
                                         cfg.codec_tolerance, workdir, cfg.train_samples),
            "ray": lambda: run_gpsl_on_ray(cfg.ray_clients, cfg.ray_epochs, workdir),
        }
        for name in parts:
            start = time.perf_counter()
            result = runs[name]()
            out["part_seconds"][name] = time.perf_counter() - start
            out["tables"] += [result[k] for k in ("table", "summary_table") if k in result]
            out["summary"] += result["summary"]
            out["targets"] += result.get("targets", [])
            out[name] = {k: v for k, v in result.items() if k not in ("table", "summary_table", "summary", "targets")}
    out["load_average"]["end"] = os.getloadavg()
    if "gpsl" in parts and "codecs" in parts:
        out["plots"] = _plots(out["gpsl"]["raw"], out["codecs"]["raw"], Path(out_dir))
    return out


def _selected_parts(cfg: SplitBenchConfig) -> tuple[str, ...]:
    """Parts named in ``ECLM_BENCH_SPLIT_PARTS`` (all by default; Ray only with ``ray_clients``).

    Raises:
        ValueError: If it names an unknown part.
    """
    chosen = [p.strip() for p in os.environ.get("ECLM_BENCH_SPLIT_PARTS", "").split(",") if p.strip()]
    unknown = sorted(set(chosen) - set(_PARTS))
    if unknown:
        raise ValueError(f"ECLM_BENCH_SPLIT_PARTS names unknown part(s) {unknown}; parts: {list(_PARTS)}")
    return tuple(p for p in _PARTS if (not chosen or p in chosen) and (p != "ray" or cfg.ray_clients > 0))


def _plots(gpsl: list[dict], codecs: list[dict], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    cuts = list(dict.fromkeys(r["cut"] for r in codecs))
    fig, axes = plt.subplots(1, len(cuts), figsize=(4.4 * len(cuts), 3.6), sharey=True, squeeze=False)
    for ax, cut in zip(axes[0], cuts, strict=True):
        base = next(r["acc"] for r in codecs if r["cut"] == cut and r["codec"] == "identity")
        ax.axhline(100 * base, color="black", linestyle="--", label="uncompressed")
        for name in (c for c in CODECS if c != "identity"):
            points = sorted((r["saving"], 100 * r["acc"]) for r in codecs if r["cut"] == cut and r["codec"] == name)
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=name)
        ax.set(xscale="log", title=f"{cut} cut", xlabel="traffic saving (x)")
    axes[0][0].set_ylabel("test accuracy %")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "split_codecs.png", dpi=90)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    ax.bar(range(len(gpsl)), [100 * statistics.mean(e["accuracies"]) for e in gpsl],
           yerr=[100 * (statistics.stdev(e["accuracies"]) if len(e["accuracies"]) > 1 else 0.0) for e in gpsl])
    ax.set_xticks(range(len(gpsl)), [f"{e['method']}\n{e['clients']} cl." for e in gpsl], fontsize=6)
    ax.set_ylabel("test accuracy %")
    ax.set_title("Severe non-IID (2 classes per client), through the platform")
    fig.tight_layout()
    fig.savefig(out_dir / "split_gpsl.png", dpi=90)
    plt.close(fig)
    return ["split_codecs.png", "split_gpsl.png"]
