"""Ablations of eclm's own settings against the adaptation benchmark's baselines.

A *variant* is eclm with some of its ``adaptation`` settings changed (e.g.
``{"trainable_share": 0.5}``). It runs the campaign the suite's eclm runs - the same pretrained
cloud, data, devices, schedule and epoch budgets (:func:`~benchmarks.baselines.experiment.prepare`)
- so with no change it reproduces the suite's eclm records. The baselines do not depend on eclm's
settings, so a variant's targets are the suite's (:mod:`benchmarks.baselines.target_figures`)
with each job's eclm records replaced by the variant's of the same (label skew, seed). What the
trainable share trades is measured this way in docs/method.md, section 4.

Usage (one job per call, so jobs can run in parallel processes)::

    python -m benchmarks.baselines.ablation --mode full --skew 2 --seed 0 \\
        --set trainable_share=0.5 --out share05_skew2_seed0.json
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
                threads: int = 1) -> dict:
    """Run eclm with ``adaptation`` over its own settings, at every epoch budget of ``config``.

    Args:
        config: The benchmark config (the suite's preset for the mode being ablated).
        label_skew: Classes per device of the job.
        seed: The job's seed.
        adaptation: Settings changed against eclm's (validated by the platform's config).
        threads: torch threads of this process.

    Returns:
        ``{"label_skew", "seed", "adaptation", "runs": {epochs: {"records", "server", "seconds"}}}``.
    """
    torch.set_num_threads(threads)
    eclm = METHODS["eclm"]
    runs = {}
    with tempfile.TemporaryDirectory(prefix="eclm-ablation-") as tmp:
        setup = prepare(config, label_skew, seed, Path(config.workdir or tmp), threads)
        for epochs in config.epoch_budgets:
            records, server, seconds = setup.run(eclm, epochs, dict(eclm.adaptation) | dict(adaptation))
            runs[str(epochs)] = {"records": records, "server": server, "seconds": seconds}
    return {"label_skew": label_skew, "seed": seed, "adaptation": dict(adaptation), "runs": runs}


def variant_targets(jobs: Sequence[dict], variants: Sequence[dict], cycles: int, arrival_from: int) -> list[dict]:
    """The suite's target records with eclm's records of every job replaced by the variant's.

    Args:
        jobs: The suite's :func:`~benchmarks.baselines.experiment.run_job` results (the baselines).
        variants: :func:`run_variant` results, one per job used (jobs without one are left out).
        cycles: Cycles per run.
        arrival_from: First cycle of the on-arrival window.

    Raises:
        ValueError: If no job has a variant, or a variant's budgets differ from its job's.
    """
    by_job = {(v["label_skew"], v["seed"]): v for v in variants}
    swapped = []
    for job in jobs:
        variant = by_job.get((job["label_skew"], job["seed"]))
        if variant is None:
            continue
        if set(variant["runs"]) != set(job["runs"]):
            raise ValueError(f"variant budgets {sorted(variant['runs'])} differ from the job's {sorted(job['runs'])}")
        job = copy.deepcopy(job)
        for epochs, run in job["runs"].items():
            run["records"]["eclm"] = variant["runs"][epochs]["records"]
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
    parser.add_argument("--set", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                        help="an adaptation setting of the variant (value parsed as JSON when it is JSON)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    result = run_variant(AdaptationBenchConfig.for_mode(args.mode), args.skew, args.seed, dict(args.set))
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
