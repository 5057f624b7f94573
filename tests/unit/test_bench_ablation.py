"""Ablations of eclm's settings (benchmarks.baselines.ablation) on the tiny adaptation setting.

A variant runs the suite's own campaign for eclm: with no change it must reproduce the suite's
eclm records, and its targets must then be the suite's; a larger trainable share must train and
upload at least as much. No assertion looks at wall-clock time.
"""

from __future__ import annotations

import json

import pytest

from benchmarks.baselines import AdaptationBenchConfig, run_job
from benchmarks.baselines.ablation import main, run_variant, variant_targets
from benchmarks.baselines.target_figures import target_records

#: Record fields that are measured time, not outcomes.
TIMED = {"seconds_per_batch", "train_seconds"}


def _outcomes(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMED} for r in records]


@pytest.fixture(scope="module")
def config() -> AdaptationBenchConfig:
    return AdaptationBenchConfig.tiny().model_copy(update={"methods": ["la", "fedavg_codec", "eclm"]})


@pytest.fixture(scope="module")
def job(config) -> dict:
    return run_job(config.model_dump_json(), 2, 0)


@pytest.fixture(scope="module")
def unchanged(config) -> dict:
    return run_variant(config, 2, 0, {})


@pytest.fixture(scope="module")
def whole_share(config) -> dict:
    return run_variant(config, 2, 0, {"trainable_share": 1.0})


def test_unchanged_variant_reproduces_the_suites_eclm(job, unchanged) -> None:
    assert set(unchanged["runs"]) == set(job["runs"])
    for epochs, run in job["runs"].items():
        assert _outcomes(unchanged["runs"][epochs]["records"]) == _outcomes(run["records"]["eclm"])


def test_unchanged_variant_gives_the_suites_targets(config, job, unchanged) -> None:
    assert variant_targets([job], [unchanged], config.cycles, config.arrival_from) == target_records(
        [job], config.cycles, config.arrival_from, None)


def test_larger_trainable_share_trains_and_uploads_more(job, unchanged, whole_share) -> None:
    for epochs in job["runs"]:
        base, wide = unchanged["runs"][epochs]["records"], whole_share["runs"][epochs]["records"]
        assert [(r["round"], r["device"]) for r in base] == [(r["round"], r["device"]) for r in wide]
        assert all(w["trained_params"] >= b["trained_params"] for b, w in zip(base, wide, strict=True))
        assert sum(w["trained_params"] for w in wide) > sum(b["trained_params"] for b in base)
        assert sum(r["bytes_up"] for r in wide) > sum(r["bytes_up"] for r in base)


def test_variant_targets_replace_only_eclm(config, job, whole_share) -> None:
    records = {r["name"]: r for r in variant_targets([job], [whole_share], config.cycles, config.arrival_from)}
    suite = {r["name"]: r for r in target_records([job], config.cycles, config.arrival_from, None)}
    assert set(records) == set(suite)
    assert records["adaptation.traffic_vs_fedavg_codec"]["value"] > suite["adaptation.traffic_vs_fedavg_codec"]["value"]
    assert job["runs"]["1"]["records"]["eclm"] != whole_share["runs"]["1"]["records"]  # the job is not modified


def test_variant_targets_refuse_unmatched_jobs(config, job, unchanged) -> None:
    with pytest.raises(ValueError, match="no job has a variant"):
        variant_targets([job], [dict(unchanged, seed=1)], config.cycles, config.arrival_from)
    with pytest.raises(ValueError, match="budgets"):
        variant_targets([job], [dict(unchanged, runs={"7": unchanged["runs"]["1"]})], config.cycles,
                        config.arrival_from)


def test_command_line_writes_a_variant(tmp_path) -> None:
    out = tmp_path / "variant.json"
    main(["--mode", "smoke", "--skew", "2", "--seed", "0", "--set", "trainable_share=0.5", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["adaptation"] == {"trainable_share": 0.5}
    assert set(result["runs"]) == {"1"} and result["runs"]["1"]["records"]


def test_command_line_rejects_a_bad_setting(tmp_path) -> None:
    with pytest.raises(SystemExit):
        main(["--skew", "2", "--seed", "0", "--set", "trainable_share", "--out", str(tmp_path / "x.json")])
    with pytest.raises(ValueError, match="trainable_share"):
        main(["--mode", "smoke", "--skew", "2", "--seed", "0", "--set", "trainable_share=7",
              "--out", str(tmp_path / "x.json")])


@pytest.fixture(scope="module")
def fedavg_unchanged(config) -> dict:
    return run_variant(config, 2, 0, {}, method="fedavg_codec")


@pytest.fixture(scope="module")
def fedavg_int8(config) -> dict:
    return run_variant(config, 2, 0, {"first_delivery_dtype": "int8"}, method="fedavg_codec")


def test_unchanged_baseline_variant_reproduces_the_suites_baseline(job, fedavg_unchanged) -> None:
    assert fedavg_unchanged["method"] == "fedavg_codec"
    for epochs, run in job["runs"].items():
        assert _outcomes(fedavg_unchanged["runs"][epochs]["records"]) == _outcomes(run["records"]["fedavg_codec"])


def test_int8_first_deliveries_shrink_what_a_baseline_receives_first(fedavg_unchanged, fedavg_int8) -> None:
    for epochs, run in fedavg_unchanged["runs"].items():
        base, small = run["records"], fedavg_int8["runs"][epochs]["records"]
        firsts = [(b, s) for b, s in zip(base, small, strict=True) if b["delivery"] == "first"]
        assert firsts and all(s["delivery"] == "first" for _, s in firsts)
        assert all(s["bytes_down"] < b["bytes_down"] for b, s in firsts)
        # weight matrices and kernels travel at half of float16; norms and biases stay float16
        assert sum(s["bytes_down"] for _, s in firsts) < 0.85 * sum(b["bytes_down"] for b, _ in firsts)


def test_variants_of_two_methods_replace_both(config, job, unchanged, fedavg_int8) -> None:
    suite = {r["name"]: r for r in target_records([job], config.cycles, config.arrival_from, None)}
    both = {r["name"]: r for r in variant_targets([job], [unchanged, fedavg_int8], config.cycles, config.arrival_from)}
    name = "adaptation.traffic_vs_fedavg_codec"
    assert both[name]["value"] > suite[name]["value"]  # the baseline received less, eclm the same
    with pytest.raises(ValueError, match="two variants of one method"):
        variant_targets([job], [fedavg_int8, fedavg_int8], config.cycles, config.arrival_from)
    with pytest.raises(ValueError, match="no records of 'heterofl'"):
        variant_targets([job], [dict(fedavg_int8, method="heterofl")], config.cycles, config.arrival_from)


def test_unknown_method_is_refused(config) -> None:
    with pytest.raises(ValueError, match="unknown method"):
        run_variant(config, 2, 0, {}, method="fedprox")
