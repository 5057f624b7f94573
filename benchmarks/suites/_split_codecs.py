"""Part 3 of suite ``split``: activation codecs at three cuts, through the platform.

Four devices holding every class (``data.classes_per_device: 10``), GPSL sampling; the device part
ends after the stem (shallow), after ``layer1`` (medium) or after ``layer2`` (deep). Each codec
level is ``split.codec`` of one platform split round (:func:`eclm.campaign.split_round.run_split_round`);
the traffic saving counts the exact codec payload bits the devices sent
(``split/<device>/bits_activations``) against 32 bits per activation element, and the accuracy is
the round's aggregated model on the held-out images.
"""

from __future__ import annotations

from benchmarks.report import Table
from benchmarks.suites._split_platform import (
    SplitFleet,
    bits_up,
    data_config,
    elements_up,
    held_out_accuracy,
    mean_std,
    platform_config,
    reservoir,
    split_settings,
)

__all__ = ["CODECS", "CUTS", "run_codecs"]

CUTS = {"shallow": 1, "medium": 3, "deep": 5}
_CUT_NAMES = {"shallow": "after the stem, 64x4x4", "medium": "after layer1, 16x4x4", "deep": "after layer2, 32x2x2"}
CODECS = {  # level -> the codec section of split config
    "identity": lambda _: {"name": "identity"},
    "mask_encoded": lambda r: {"name": "mask_encoded", "ratio": r, "bits": 2},
    "topk": lambda r: {"name": "topk", "ratio": r},
    "randomized_topk": lambda r: {"name": "randomized_topk", "ratio": r},
    "uniform_quantization": lambda b: {"name": "uniform_quantization", "bits": b},
}
_ALL = ("mask_encoded", "topk", "randomized_topk", "uniform_quantization")
PUBLISHED_MS = {
    "shallow": {"mask_encoded": "13.11x", "topk": "never", "randomized_topk": "never",
                "uniform_quantization": "never (3-bit)"},
    "deep": dict.fromkeys(_ALL, "~13.5x"),
}


def run_codecs(cuts: tuple[str, ...], levels: tuple[tuple[str, tuple], ...], epochs: int, seeds: int,
               tolerance: float, workdir: str, total: int | None = None) -> dict:
    """Accuracy and traffic saving of each codec level at each cut, 4 IID devices."""
    rows, summary_rows, raw = [], [], []
    for cut_name in cuts:
        base = _codec_run(CUTS[cut_name], "identity", None, epochs, seeds, workdir, total)
        rows.append([cut_name, "none", "-", 1.0, 100 * base["acc"], 100 * base["std"], True])
        raw.append({"cut": cut_name, "codec": "identity", "level": None, **base})
        for codec_name, codec_levels in levels:
            best = None
            for level in codec_levels:
                out = _codec_run(CUTS[cut_name], codec_name, level, epochs, seeds, workdir, total)
                ok = out["acc"] >= base["acc"] - tolerance
                rows.append([cut_name, codec_name, level, out["saving"], 100 * out["acc"], 100 * out["std"], ok])
                raw.append({"cut": cut_name, "codec": codec_name, "level": level, **out})
                if ok and (best is None or out["saving"] > best):
                    best = out["saving"]
            published = PUBLISHED_MS.get(cut_name, {}).get(codec_name, "–")
            summary_rows.append([cut_name, codec_name, "never" if best is None else f"{best:.1f}x", published])
    return _report(rows, summary_rows, raw, cuts, epochs, seeds, tolerance)


def _codec_run(cut: int, codec: str, level, epochs: int, seeds: int, workdir: str, total: int | None) -> dict:
    accs, savings = [], []
    for seed in range(seeds):
        size, test = reservoir(data_config(devices=1, classes=10, samples=(1, 1), seed=seed))
        share = min(total or size, size) // 4
        data = data_config(devices=4, classes=10, samples=(share, share), seed=seed)
        split = split_settings(fixed_cut=cut, epochs=epochs, seed=seed, codec=CODECS[codec](level))
        cfg = platform_config(f"codec-{codec}", data, split, [{"name": f"c{i}"} for i in range(4)], seed=seed,
                              workdir=workdir)
        fleet = SplitFleet(cfg)
        result = fleet.round(epochs)
        accs.append(held_out_accuracy(result, fleet.skeleton, test))
        savings.append(32 * elements_up(result, cut, epochs) / bits_up(result))
    acc, std = mean_std(accs)
    return {"acc": acc, "std": std, "accs": accs, "saving": mean_std(savings)[0]}


def _report(rows: list, summary_rows: list, raw: list, cuts: tuple[str, ...], epochs: int, seeds: int,
            tolerance: float) -> dict:
    found = {(r[0], r[1]): r[2] for r in summary_rows}
    summary = []
    if "shallow" in cuts:
        summary.append(
            "Shallow cut, largest traffic saving that still reaches the uncompressed accuracy (through the "
            f"platform): MS {found.get(('shallow', 'mask_encoded'), '–')}, top-k {found.get(('shallow', 'topk'), '–')}, "
            f"randomised top-k {found.get(('shallow', 'randomized_topk'), '–')}, quantisation "
            f"{found.get(('shallow', 'uniform_quantization'), '–')} (published, CIFAR-10: MS 13.11x, the others never).")
    cut_text = ", ".join(f"{c} = {_CUT_NAMES[c]}" for c in cuts)
    notes = (
        "Every level is one platform split round (run_split_round over the services, in-process LocalFleet) with "
        "split.codec set to it: the platform's modular resnet18 (widths 16/32/64/128, BatchNorm) on digits 16x16 "
        "grey, 4 devices holding every class (each draws a quarter of the reservoir's size from it, so local sets "
        "overlap), GPSL sampling, global batch 32, SGD lr 0.05 momentum 0.9 (constant), epoch-end averaging of "
        f"the device parts, {epochs} epochs, mean (std) over {seeds} seed(s). Cuts: {cut_text}. Saving = 32 "
        "bits x activation elements sent in training / the exact codec payload bits the devices sent (uplink; "
        "gradients go back uncompressed, straight-through). Reaches = mean test accuracy >= uncompressed mean "
        f"accuracy - {tolerance:.0%}. MS: b = 2 bits, level = sparsity r; top-k and randomised top-k: level = r "
        "(1-bit position map); quantisation: level = bits.")
    table = Table("Codecs at shallow / medium / deep cuts: accuracy and traffic saving",
                  ["cut", "codec", "level", "traffic saving (x)", "test acc %", "std", "reaches uncompressed"],
                  rows, notes=notes)
    summary_table = Table(
        "Traffic saving needed to reach the uncompressed accuracy (largest that still reaches it)",
        ["cut", "codec", "ours (digits)", "published (CIFAR-10)"], summary_rows,
        notes="Published: Zhou et al., arXiv 2408.13787; the setting differs (CIFAR-10, ResNet).")
    return {"table": table.to_dict(), "summary_table": summary_table.to_dict(), "raw": raw, "summary": summary}
