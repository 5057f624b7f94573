"""Ablations of eclm's own settings against the adaptation benchmark's baselines.

A *variant* is eclm (or one of the suite's other methods) with some of its ``adaptation``
settings changed (e.g. ``{"trainable_share": 0.5}``). It runs the campaign the suite runs for that
method - the same pretrained cloud, data, devices, schedule and epoch budgets
(:func:`~benchmarks.baselines.experiment.prepare`) - so with no change it reproduces the suite's
records of the method. The methods do not depend on each other's settings, so a variant's targets
are the suite's (:mod:`benchmarks.baselines.target_figures`) with each job's records of the
variant's method replaced by the variant's of the same (label skew, seed). What the trainable
share trades, and what int8 first deliveries cost eclm and the codec baselines, are measured this
way in docs/method.md, sections 2 and 4.

Usage (one job per call, so jobs can run in parallel processes)::

    python -m benchmarks.baselines.ablation --mode full --skew 2 --seed 0 \\
        --set trainable_share=0.5 --out share05_skew2_seed0.json
    python -m benchmarks.baselines.ablation --mode full --skew 2 --seed 0 --method fedavg_codec \\
        --set first_delivery_dtype=int8 --out fedavg_int8_skew2_seed0.json
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from benchmarks.baselines.config import AdaptationBenchConfig
from benchmarks.baselines.experiment import prepare
from benchmarks.baselines.methods import METHODS
from benchmarks.baselines.target_figures import target_records


def run_variant(config: AdaptationBenchConfig, label_skew: int, seed: int, adaptation: Mapping[str, object],
                threads: int = 1, method: str = "eclm") -> dict:
    """Run ``method`` with ``adaptation`` over its own settings, at every epoch budget of ``config``.

    Args:
        config: The benchmark config (the suite's preset for the mode being ablated).
        label_skew: Classes per device of the job.
        seed: The job's seed.
        adaptation: Settings changed against the method's (validated by the platform's config).
        threads: torch threads of this process.
        method: A method of the suite (:data:`~benchmarks.baselines.methods.METHODS`).

    Returns:
        ``{"method", "label_skew", "seed", "adaptation", "runs": {epochs: {"records", "server", "seconds"}}}``.

    Raises:
        ValueError: If ``method`` is not one of the suite's.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; the suite's are {sorted(METHODS)}")
    torch.set_num_threads(threads)
    chosen = METHODS[method]
    runs = {}
    with tempfile.TemporaryDirectory(prefix="eclm-ablation-") as tmp:
        setup = prepare(config, label_skew, seed, Path(config.workdir or tmp), threads)
        for epochs in config.epoch_budgets:
            records, server, seconds = setup.run(chosen, epochs, dict(chosen.adaptation) | dict(adaptation))
            runs[str(epochs)] = {"records": records, "server": server, "seconds": seconds}
    return {"method": method, "label_skew": label_skew, "seed": seed, "adaptation": dict(adaptation), "runs": runs}


def variant_targets(jobs: Sequence[dict], variants: Sequence[dict], cycles: int, arrival_from: int) -> list[dict]:
    """The suite's target records with the records of every job replaced by the variants'.

    Args:
        jobs: The suite's :func:`~benchmarks.baselines.experiment.run_job` results (the baselines).
        variants: :func:`run_variant` results: per job used at most one per method (a variant
            without ``"method"`` is eclm's); jobs without one are left out.
        cycles: Cycles per run.
        arrival_from: First cycle of the on-arrival window.

    Raises:
        ValueError: If no job has a variant, or a variant's budgets differ from its job's.
    """
    by_job: dict[tuple[int, int], list[dict]] = {}
    for v in variants:
        by_job.setdefault((v["label_skew"], v["seed"]), []).append(v)
    swapped = []
    for job in jobs:
        found = by_job.get((job["label_skew"], job["seed"]))
        if not found:
            continue
        methods = [v.get("method", "eclm") for v in found]
        if len(set(methods)) != len(methods):
            raise ValueError(f"two variants of one method for label skew {job['label_skew']}, seed {job['seed']}")
        job = copy.deepcopy(job)
        for variant, method in zip(found, methods, strict=True):
            if set(variant["runs"]) != set(job["runs"]):
                raise ValueError(f"variant budgets {sorted(variant['runs'])} differ from the job's {sorted(job['runs'])}")
            for epochs, run in job["runs"].items():
                if method not in run["records"]:
                    raise ValueError(f"the job has no records of {method!r} to replace")
                run["records"][method] = variant["runs"][epochs]["records"]
        swapped.append(job)
    if not swapped:
        raise ValueError("no job has a variant of the same label skew and seed")
    return target_records(swapped, cycles, arrival_from, None)


def _setting(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: run one variant job and write its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("quick", "full", "smoke"), default="full")
    parser.add_argument("--skew", type=int, required=True, help="classes per device of the job")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--method", choices=sorted(METHODS), default="eclm", help="the method to vary (default eclm)")
    parser.add_argument("--set", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                        help="an adaptation setting of the variant (value parsed as JSON when it is JSON)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    result = run_variant(AdaptationBenchConfig.for_mode(args.mode), args.skew, args.seed, dict(args.set),
                         method=args.method)
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
