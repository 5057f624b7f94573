"""The adaptation, platform-overhead and scale benchmarks' code paths on tiny settings (no Ray).

The adaptation suite runs for real (all five methods through the platform's cycle coordinator,
one seed, two cycles). The Ray-side
measurements of the other two suites are replaced by recorded/fake results; everything they
feed (in-process reference cycles, merge-cost probe, skip rules, growth fits, tables, plots)
runs for real. No assertion looks at wall-clock time.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks.baselines import (
    METHOD_NAMES,
    METHODS,
    AdaptationBenchConfig,
    FedAvgCloud,
    HeteroFLCloud,
    LocalAdaptation,
    NoAdaptation,
    configured_resources,
    device_records,
    measure_adaptation_memory,
    prefix_spec,
    widest_prefix_within,
)
from benchmarks.report import check_result
from benchmarks.suites._platform_bench import CampaignShape, OverheadBenchConfig, ScaleBenchConfig
from benchmarks.suites._process_tree import TreeMemorySampler, tree_rss
from benchmarks.suites._scale_measure import predict, run_scale
from benchmarks.suites.adaptation import run_adaptation_benchmark
from benchmarks.suites.platform_overhead import derive_figures, run_overhead_benchmark
from benchmarks.suites.scale import growth_rates, run_scale_benchmark
from eclm.campaign.messages import DeviceSummary, HeldModel, Resources
from eclm.campaign.results import CycleResult
from eclm.modules import DeviceProfile, SubModelSpec, fits, modularize

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- import hygiene
def test_benchmark_modules_import_without_ray_or_mlflow() -> None:
    code = ("import sys, benchmarks.baselines, benchmarks.suites.adaptation, benchmarks.suites.platform_overhead, "
            "benchmarks.suites.scale, benchmarks.suites._overhead_measure, benchmarks.suites._scale_measure, "
            "benchmarks.suites._plain_worker; "
            "assert 'ray' not in sys.modules and 'mlflow' not in sys.modules, sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('ray', 'mlflow'))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# ----------------------------------------------------------------------------- configuration
@pytest.mark.parametrize(("overrides", "field"), [
    ({"methods": ["eclm", "magic"]}, "magic"),
    ({"label_skews": [11]}, "label_skews"),
    ({"tiers": [0.0]}, "tiers"),
    ({"num_devices": 4, "devices_per_cycle": 5}, "devices_per_cycle"),
    ({"samples_per_device": (1, 5)}, "samples_per_device"),
    ({"unknown_key": 1}, "unknown_key"),
])
def test_adaptation_config_rejects_bad_values(overrides: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        AdaptationBenchConfig(**overrides)


@pytest.mark.parametrize("factory", [AdaptationBenchConfig.for_mode, OverheadBenchConfig.for_mode,
                                     ScaleBenchConfig.for_mode])
def test_presets_reject_unknown_mode(factory) -> None:
    with pytest.raises(ValueError, match="mode"):
        factory("medium")


@pytest.mark.parametrize(("overrides", "field"), [
    ({"modes": ["actor", "threads"]}, "modes"),
    ({"device_counts": [16, 4]}, "device_counts"),
])
def test_scale_config_rejects_bad_values(overrides: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ScaleBenchConfig(**overrides)


@pytest.mark.parametrize(("mode", "devices", "per_cycle"), [("quick", 8, 8), ("full", 100, 25)])
def test_presets_match_the_issue_settings(mode: str, devices: int, per_cycle: int) -> None:
    cfg = AdaptationBenchConfig.for_mode(mode)
    assert (cfg.num_devices, cfg.sampled) == (devices, per_cycle)
    assert cfg.cycles >= 10 and cfg.arrival_from == 6 and cfg.epoch_budgets == [1, 3]
    assert set(cfg.methods) == set(METHODS) and any(m is not None for m in cfg.memory_mb)
    if mode == "full":  # issue #11's protocol
        assert cfg.label_skews == [2, 5] and cfg.seeds >= 3
    skew = cfg.label_skews[-1]
    platform = cfg.platform_config(skew, 1, REPO, 3, dict(METHODS["fedavg"].adaptation))
    assert platform.data.classes_per_device == skew and platform.seed == 1 and platform.data.num_devices == devices
    assert platform.adaptation.epochs == 3 and platform.adaptation.trainable == "all"
    assert platform.adaptation.delta_dtype == "float32"  # FedAvg as published
    weakest = [d for d in platform.devices if d.memory_mb is not None]
    assert weakest and all(d.memory_mb < 31 for d in weakest)  # cannot train the full model (about 31 MB)


# ----------------------------------------------------------------------------- width prefix
@pytest.fixture(scope="module")
def small_modular():
    return modularize("resnet18", modules_per_layer=4, num_classes=10, channels=(8, 8, 16, 16))


@pytest.mark.parametrize("fraction", [0.6, 0.8, 0.95, 1.0])
def test_widest_prefix_fits_and_the_next_wider_does_not(small_modular, fraction: float) -> None:
    m = small_modular
    costs = m.costs()
    full = costs.total(m.full_spec())["params"]
    budget = DeviceProfile(name="d", max_params=fraction * full)

    spec = widest_prefix_within(costs, m.model_id, m.layer_sizes, budget)

    width = len(spec.groups[0])
    assert costs.total(spec)["params"] <= fraction * full
    assert all(g == tuple(range(len(g))) for g in spec.groups)  # a prefix in every layer
    if width < 4:
        assert costs.total(prefix_spec(m.model_id, m.layer_sizes, width + 1, 4))["params"] > fraction * full


def test_no_prefix_fits_a_tiny_budget(small_modular) -> None:
    m = small_modular
    with pytest.raises(ValueError, match="tiny-device"):
        widest_prefix_within(m.costs(), m.model_id, m.layer_sizes, DeviceProfile(name="tiny-device", max_params=10))


def test_prefix_spec_rejects_out_of_range_width(small_modular) -> None:
    with pytest.raises(ValueError, match="groups"):
        prefix_spec(small_modular.model_id, small_modular.layer_sizes, 5, 4)


def test_every_configurable_method_is_registered() -> None:
    assert set(METHODS) == set(METHOD_NAMES)
    assert [m for m in METHODS if not METHODS[m].merges] == ["na", "la"] and not METHODS["na"].adapts
    # module sparsity is eclm's own: every baseline that trains, trains every parameter
    assert all(METHODS[m].adaptation.get("trainable") == "all" for m in METHODS if m not in ("eclm", "na"))
    assert METHODS["fedavg"].adaptation["delta_dtype"] == "float32" != METHODS["fedavg_codec"].adaptation["delta_dtype"]


def _summary(held: bool) -> DeviceSummary:
    spec = SubModelSpec(model_id="m", groups=[(0,)])
    return DeviceSummary(device="d", importance=((0.5, 0.5),), resources=Resources(), num_samples=10, classes=(0, 1),
                         held=HeldModel(spec=spec, version=0) if held else None)


@pytest.mark.parametrize("strategy", [NoAdaptation, LocalAdaptation])
def test_na_and_la_deliver_the_derivation_once_and_never_merge(strategy) -> None:
    cloud = SimpleNamespace(derive=lambda summary: ("derived for", summary.device))

    first, later = strategy().deliver(cloud, _summary(held=False)), strategy().deliver(cloud, _summary(held=True))

    assert first == ("derived for", "d") and later is None
    assert not strategy.merges and strategy.adapts == (strategy is LocalAdaptation)


def test_a_failed_device_fails_the_benchmark_cycle() -> None:
    # A benchmark must not silently average over fewer devices than it claims.
    result = CycleResult(round=1, devices=["d"], failures={"d": "adapt: error: RuntimeError: boom"})
    with pytest.raises(RuntimeError, match="boom"):
        device_records(result, {}, None, 24, adapts=True)


def test_measuring_devices_have_no_configured_resources() -> None:
    from eclm.config import DeviceConfig

    assert configured_resources(DeviceConfig(name="a", params_fraction=0.5)).params_fraction == 0.5
    with pytest.raises(ValueError, match="'m'"):
        configured_resources(DeviceConfig(name="m", measure=True))


@pytest.fixture(scope="module")
def tiny_platform_config(tmp_path_factory):
    return AdaptationBenchConfig.tiny().platform_config(2, 0, tmp_path_factory.mktemp("bench"))


def test_width_slices_fit_the_budgets_the_cloud_computes(tiny_platform_config) -> None:
    cfg = tiny_platform_config
    fedavg, heterofl = FedAvgCloud(cfg), HeteroFLCloud(cfg)
    costs = fedavg.model.costs()
    summaries = [_summary(held=False).model_copy(update={"device": d.name, "resources": configured_resources(d)})
                 for d in cfg.devices]
    budgets = [fedavg.budget(s.device, s.resources) for s in summaries]

    common = {fedavg.width_spec(s) for s in summaries}
    own = [heterofl.width_spec(s) for s in summaries]

    assert len(common) == 1 and all(fits(costs, next(iter(common)), b) for b in budgets)
    assert all(fits(costs, spec, b) for spec, b in zip(own, budgets, strict=True))
    assert all(spec.num_modules() >= next(iter(common)).num_modules() for spec in own)
    assert max(own, key=lambda spec: spec.num_modules()) == fedavg.model.full_spec()  # tier 1.0: the whole model


# ----------------------------------------------------------------------------- adaptation suite
@pytest.fixture(scope="module")
def job():
    """One tiny (label skew, seed) job with every method; shared by the tests below."""
    from benchmarks.baselines import run_job

    return run_job(AdaptationBenchConfig.tiny().model_dump_json(), 2, 0)


@pytest.fixture(scope="module")
def adaptation_result(job, tmp_path_factory):
    out = tmp_path_factory.mktemp("adaptation")
    return run_adaptation_benchmark(AdaptationBenchConfig.tiny(), out, jobs=[job]), out


def test_adaptation_result_is_a_valid_report(adaptation_result) -> None:
    result, out = adaptation_result
    check_result(result)
    json.dumps(result)
    # per setting: accuracy and per-cycle tables; then cost, ratios, memory per tier, server, downloads, paper
    assert len(result["tables"]) == 2 * len(result["settings"]) + 6
    assert {t["name"] for t in result["targets"]} >= {"adaptation.traffic_vs_fedavg_published",
                                                       "adaptation.arrival_gain_vs_heterofl_pts",
                                                       "adaptation.after_gain_vs_best_1ep_pts"}
    for plot in result["plots"]:
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"
    assert result["summary"] and all(isinstance(line, str) for line in result["summary"])


def test_every_method_reports_sane_metrics(adaptation_result) -> None:
    result, _ = adaptation_result
    setting = result["settings"]["2 classes, 1 epoch"]
    assert set(setting["methods"]) == set(METHODS) and setting["seeds"] == 1
    for entry in setting["methods"].values():
        for key in ("acc_after", "acc_after_dev", "acc_before", "first_acc_after", "arrival"):
            assert 0.0 <= entry[key]["mean"] <= 1.0
        assert len(entry["curves"]["acc_after"]) == 2
        # A restricted argmax over the device's classes can only be right more often.
        assert entry["acc_after_dev"]["mean"] >= entry["acc_after"]["mean"] - 1e-9
    assert set(setting["ratios"]) == set(METHODS) - {"eclm"}


def test_na_never_changes_and_never_uploads(job) -> None:
    recs = job["runs"]["1"]["records"]["na"]
    assert all(r["acc_after"] == r["acc_before"] and r["bytes_up"] == 0 for r in recs)
    assert all(r["forgetting"] in (None, 0.0) for r in recs)
    first = {r["device"]: r["bytes_down"] for r in recs if r["round"] == 1}
    later = {r["bytes_down"] for r in recs if r["round"] > 1}
    # Derived once, never again: later cycles carry only the selector every device receives.
    assert len(later) == 1 and all(next(iter(later)) < b for b in first.values())


def test_every_download_says_what_it_carried(job, adaptation_result) -> None:
    records = job["runs"]["1"]["records"]
    for method in ("eclm", "fedavg", "fedavg_codec", "heterofl", "heterofl_codec"):
        assert {r["delivery"] for r in records[method] if r["round"] == 1} == {"first"}, method
    for method in ("fedavg", "heterofl"):  # as published: the whole float32 model every cycle
        assert {r["delivery"] for r in records[method] if r["round"] > 1} == {"weights"}
    assert {r["delivery"] for r in records["eclm"] if r["round"] > 1} <= {"kept", "delta", "respec", "refresh"}
    table = next(t for t in adaptation_result[0]["tables"] if t["title"] == "Downloads by kind")
    eclm_rows = [row for row in table["rows"] if row[0] == "eclm"]
    assert sum(row[3] for row in eclm_rows) == pytest.approx(1.0, abs=0.01)
    first = next(row for row in eclm_rows if row[1] == "first")
    assert first[4] > max((row[4] for row in eclm_rows if row[1] in ("kept", "delta")), default=0)


def test_eclm_trains_a_budgeted_subset_and_the_baselines_train_everything(job) -> None:
    records = job["runs"]["1"]["records"]
    for r in records["eclm"]:
        assert r["trainable"] is not None and 0 < r["trained_params"] < r["params"]
    for method in ("la", "fedavg", "fedavg_codec", "heterofl", "heterofl_codec"):
        assert all(r["trainable"] is None and r["trained_params"] == pytest.approx(r["params"]) for r in records[method])
    assert all(r["bytes_up"] == 0 for r in records["la"])
    # the shared codec sends less than the published float32 model, for the same method
    for base in ("fedavg", "heterofl"):
        published = sum(r["bytes_up"] + r["bytes_down"] for r in records[base])
        assert sum(r["bytes_up"] + r["bytes_down"] for r in records[f"{base}_codec"]) < published


def test_sub_models_respect_budgets_and_width_rules(job) -> None:
    full = job["full_cost"]["params"]
    records = job["runs"]["1"]["records"]
    for method in METHODS:
        for r in records[method]:
            assert r["params"] <= r["tier"] * full * (1 + 1e-9)
    fedavg = {r["params"] for r in records["fedavg"]}
    assert len(fedavg) == 1  # one model for everybody
    assert all(r["params"] >= min(fedavg) for r in records["heterofl"])
    for r in records["fedavg"] + records["heterofl"]:
        assert all(g == list(range(len(g))) for g in r["groups"])
    eclm_down = [r["bytes_down"] for r in records["eclm"]]
    la_first = [r["bytes_down"] for r in records["la"] if r["round"] == 1]
    assert min(eclm_down) > 0 and max(la_first) > 0


def test_memory_probe_measures_each_sub_model(small_modular) -> None:
    m = small_modular
    request = {"arch": m.arch, "modules_per_layer": 4, "input_size": [3, 32, 32], "classes": [0, 1], "samples": 24,
               "epochs": 1, "lr": 0.01, "momentum": 0.9, "batch_size": 8, "replay_capacity": 16,
               "replay_ratio": 0.5, "specs": {"full": [list(range(4))] * len(m.layers), "narrow": [[0]] * len(m.layers),
                                              "sparse": {"groups": [list(range(4))] * len(m.layers),
                                                         "trainable": {"groups": [[]] * (len(m.layers) - 1) + [[0]],
                                                                       "head_rows": [0, 1], "shared": False}},
                                              "sparse, no cache": {"groups": [list(range(4))] * len(m.layers),
                                                                   "trainable": {"groups": [[]] * (len(m.layers) - 1)
                                                                                 + [[0]], "head_rows": [0, 1],
                                                                                 "shared": False},
                                                                   "cache_limit": 0}}}

    results = measure_adaptation_memory(request)

    assert [r["key"] for r in results] == ["full", "narrow", "sparse", "sparse, no cache"]
    for r in results:
        assert "error" not in r, r
        assert r["peak_rss"] >= r["baseline_rss"] > 0 and r["adaptation_rss"] >= 0
    assert results[0]["params"] > results[1]["params"] and results[2]["sparse"] and not results[0]["sparse"]
    assert results[0]["prefix_cached"] is None and results[2]["prefix_cached"] is True
    assert results[3]["prefix_cached"] is False  # the device's plan leaves no room for the frozen stages' output


# ----------------------------------------------------------------------------- overhead suite
def _recorded_ray_side(devices: int) -> dict:
    runs = [{"wall_seconds": 1.0 + 0.1 * i, "train_seconds": 0.5, "batches": 10, "seconds_per_batch": 0.05}
            for i in range(3)]
    plain = [{"wall_seconds": 0.8, "train_seconds": 0.4, "batches": 10, "seconds_per_batch": 0.04, "samples": 240}
             for _ in range(3)]
    cycle = {"durations": {"derive": 0.5, "ship": 0.2, "adapt": 2.0, "merge": 1.0, "log": 0.3}, "decision": "reject",
             "bytes_up": 1, "bytes_down": 1, "failures": {}}
    return {"cycles": [cycle, cycle], "flops_per_sample": 2e6,
            "throughput": [{"threads": 1, "samples_per_adapt": 240, "actor": runs, "plain": plain,
                            "matmul_gflops": 10.0, "matmul_gflops_all": [10.0]}]}


def test_overhead_suite_builds_its_report_from_recorded_ray_runs() -> None:
    shape = CampaignShape(channels=(8, 8, 16, 16), modules_per_layer=2, samples_per_device=(20, 30),
                          offline_epochs=0, adapt_epochs=1)
    config = OverheadBenchConfig(campaign=shape, devices=2, cycles=1, merge_scaling=[1, 2])

    result = run_overhead_benchmark(config, ray_result=_recorded_ray_side(2))

    check_result(result)
    json.dumps(result)
    d = result["derived"]
    # actor 480 samples/s vs plain 600 samples/s in every round
    assert d["throughput"][0]["throughput_ratio"]["mean"] == pytest.approx(0.8)
    assert d["throughput"][0]["actor_gflops"]["mean"] == pytest.approx(3 * 2e6 * 480 / 1e9)
    # The share compares the recorded Ray seconds with this machine's in-process seconds (which
    # include the merge's defences): no bound on it holds on a loaded machine, only its form does.
    assert math.isfinite(d["orchestration_share"]) and d["log_share"] == pytest.approx(0.3 / 4.0)
    scaling = result["in_process"]["merge_scaling"]
    assert [s["updates"] for s in scaling] == [1, 2]
    assert all(s["candidates"] is None or s["candidates"] >= 1 for s in scaling)
    assert set(result["in_process"]["cycles"][0]["durations"]) == {"summary", "derive", "ship", "adapt", "merge"}


def test_orchestration_share_is_zero_when_ray_matches_the_ideal() -> None:
    ray = _recorded_ray_side(1)
    local = {"cycles": [{"durations": {"summary": 0.0, "derive": 0.5, "ship": 0.2, "adapt": 2.0, "merge": 1.0},
                         "decision": "reject"}], "merge_scaling": []}

    d = derive_figures(ray, local, OverheadBenchConfig(devices=1))

    assert d["ideal"] == pytest.approx(3.7) and d["orchestration_share"] == pytest.approx(0.0)


# ----------------------------------------------------------------------------- scale suite
def _fake_run(per_device_gib: float):
    def run(config, mode, devices, workdir, uri):
        if mode == "pooled" and devices == 8:
            raise RuntimeError("pool exploded")
        return {"mode": mode, "devices": devices, "status": "ok", "start_seconds": 1.0 + devices,
                "cycle_seconds": [2.0 + 0.5 * devices, 2.0 + 0.5 * devices], "cycles": [{"adapt": 1.0, "merge": 0.5}] * 2,
                "failures": 0, "decisions": ["accept"], "peak_rss": int(2 * devices * per_device_gib * 2**30),
                "peak_pss": int(devices * per_device_gib * 2**30), "processes": devices + 3,
                "total_seconds": 5.0 + devices, "pool_size": None}
    return run


def test_scale_skips_runs_predicted_to_exceed_memory_and_records_failures(tmp_path: Path) -> None:
    config = ScaleBenchConfig(device_counts=[2, 4, 8, 64], memory_limit_gib=20.0, time_budget_s=1e6)

    raw = run_scale(config, tmp_path, _fake_run(per_device_gib=0.5), start_ray=False, settle_s=0.0)

    status = {(r["mode"], r["devices"]): r["status"] for r in raw["runs"]}
    assert status[("actor", 8)] == "ok" and status[("actor", 64)] == "skipped"  # 32 GiB predicted
    assert status[("pooled", 8)] == "failed" and "pool exploded" in next(
        r["reason"] for r in raw["runs"] if r["status"] == "failed")
    result = run_scale_benchmark(config, tmp_path, raw=raw)
    check_result(result)
    assert (tmp_path / result["plots"][0]).read_bytes()[:4] == b"\x89PNG"
    growth = result["growth"]["actor"]
    assert growth["cycle_seconds"]["per_device"] == pytest.approx(0.5)
    assert growth["pss_mib"]["per_device"] == pytest.approx(512.0)


def test_scale_respects_the_time_budget(tmp_path: Path) -> None:
    config = ScaleBenchConfig(device_counts=[2, 4, 200], modes=["pooled"], time_budget_s=100.0)

    raw = run_scale(config, tmp_path, _fake_run(per_device_gib=0.01), start_ray=False, settle_s=0.0)

    skipped = [r for r in raw["runs"] if r["status"] == "skipped"]
    assert [r["devices"] for r in skipped] == [200] and "budget" in skipped[0]["reason"]


@pytest.mark.parametrize(("points", "n", "expected"), [
    ([(2, 10.0)], 8, 40.0),                 # one run: proportional
    ([(2, 10.0), (4, 14.0)], 8, 22.0),      # two runs: linear through the last two
])
def test_predict_extrapolates(points, n: int, expected: float) -> None:
    done = [{"devices": d, "v": v} for d, v in points]
    assert predict(done, n, lambda r: r["v"]) == pytest.approx(expected)


def test_growth_rates_need_two_device_counts() -> None:
    run = _fake_run(0.1)(None, "actor", 4, None, None)
    g = growth_rates([run])
    assert g["cycle_seconds"]["per_device"] is None and g["exponent"] is None


def test_tree_memory_sampler_sees_a_child_process() -> None:
    import time

    import psutil

    child = subprocess.Popen([sys.executable, "-c", "import sys, time; x = b'x' * (64 * 2**20); "
                              "print('ready', flush=True); time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"  # its 64 MiB are resident now
        own = psutil.Process().memory_info().rss
        with TreeMemorySampler(interval_s=0.05, pss_every=2) as mem:
            time.sleep(0.3)
        assert mem.processes >= 2 and mem.peak_pss > 0
        assert mem.peak_rss >= own + 60 * 2**20 and tree_rss() >= mem.peak_rss * 0.5
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("method_name", ["fedavg", "heterofl"])
def test_federated_baselines_average_weights_not_the_uploaded_deltas(tiny_platform_config, method_name: str) -> None:
    # Devices upload their change (the platform's delta exchange); FedAvg/HeteroFL must re-base it
    # on the global slice they delivered. With one device, the new global slice is its weights.
    import torch

    from eclm.campaign.messages import AttributedUpdate
    from eclm.modules import unpack_state
    from eclm.modules.deltas import is_delta_key
    from eclm.pipelines.edge_service import EdgeService

    method = METHODS[method_name]
    cfg = AdaptationBenchConfig.tiny().platform_config(2, 0, tiny_platform_config.workdir, 1, dict(method.adaptation))
    cloud, service = method.cloud(cfg), EdgeService(cfg, 0)
    package = cloud.derive(service.summary(cloud.selector_payload()))
    service.install(package, cloud.info().costs)
    upload = service.adapt()
    adapted = unpack_state(service.snapshot_model())[0]
    assert unpack_state(upload.payload)[2]["kind"] == "delta"

    outcome = cloud.merge([AttributedUpdate(channel=service.name, issued=package.spec,
                                            enrolled_classes=tuple(service.classes), update=upload)])

    assert outcome.decision == "accept" and outcome.version == 1 and outcome.accepted == (service.name,)
    global_slice = cloud.model.extract(package.spec).state_dict()
    for key, value in adapted.items():
        if is_delta_key(key, value):
            torch.testing.assert_close(global_slice[key], value, rtol=0, atol=1e-5)


def test_a_codec_baseline_device_holds_the_global_slice_after_a_delta_download(tiny_platform_config) -> None:
    # FedAvg with the shared codec: the download is an int8 delta against the version the device
    # holds, added to that version (not to the device's own adaptation), as FedAvg replaces it.

    from eclm.campaign.messages import AttributedUpdate
    from eclm.modules import unpack_state
    from eclm.modules.deltas import first_delivery, is_delta_key, to_float32
    from eclm.pipelines.edge_service import EdgeService

    method = METHODS["fedavg_codec"]
    cfg = AdaptationBenchConfig.tiny().platform_config(2, 0, tiny_platform_config.workdir, 1, dict(method.adaptation))
    cloud, mine, other = method.cloud(cfg), EdgeService(cfg, 0), EdgeService(cfg, 1)
    for device in (mine, other):
        device.install(cloud.derive(device.summary(cloud.selector_payload())), cloud.info().costs)
    first = cloud.model.extract(mine.spec).state_dict()  # version 0, received in the first delivery's codec
    first_rounding = sum(float((v - first[k]).pow(2).sum()) for k, v in to_float32(
        first_delivery(first, cfg.adaptation.first_delivery_dtype)).items() if is_delta_key(k, first[k])) ** 0.5
    upload = other.adapt()
    cloud.merge([AttributedUpdate(channel=other.name, issued=other.spec, enrolled_classes=tuple(other.classes),
                                  update=upload)])
    mine.adapt()  # its own adaptation, which FedAvg does not keep across versions
    adapted = unpack_state(mine.snapshot_model())[0]
    package = cloud.derive(mine.summary(cloud.selector_payload()))
    assert unpack_state(package.payload)[2]["kind"] == "delta"
    mine.install(package, cloud.info().costs)
    held, global_slice = unpack_state(mine.snapshot_model())[0], cloud.model.extract(package.spec).state_dict()
    keys = [k for k, v in global_slice.items() if is_delta_key(k, v)]

    def distance(state: dict) -> float:
        return sum(float((state[k] - global_slice[k]).pow(2).sum()) for k in keys) ** 0.5

    # what is left is the codec's rounding (the first delivery's, which a delta against the version
    # the device holds does not undo, and the int8 delta's), not the adaptation
    assert distance(held) < 1.1 * first_rounding + 0.1 * distance(adapted) < 0.5 * distance(adapted)
    assert package.nbytes < 0.4 * sum(v.numel() * 4 for k, v in global_slice.items() if is_delta_key(k, v))


def test_a_kept_job_is_read_back_instead_of_run_again(tmp_path, monkeypatch) -> None:
    from benchmarks.suites import adaptation

    calls = []

    def fake_run_job(config_json, label_skew, seed, threads=1):
        calls.append((label_skew, seed))
        return {"label_skew": label_skew, "seed": seed, "runs": {"1": {"records": {"eclm": [(1, 2)]}}}}

    monkeypatch.setattr(adaptation, "run_job", fake_run_job)
    where = str(tmp_path / "kept")
    first = adaptation.kept_job("{}", 2, 1, 1, where)
    again = adaptation.kept_job("{}", 2, 1, 1, where)
    other = adaptation.kept_job("{}", 5, 1, 1, where)
    assert calls == [(2, 1), (5, 1)]  # the second call of (2, 1) ran nothing
    assert again == first and first["runs"]["1"]["records"]["eclm"] == [[1, 2]]  # as JSON either way
    assert first["progress_commit"] and other["label_skew"] == 5
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["skew2_seed1.json", "skew5_seed1.json"]
    assert adaptation.kept_job("{}", 5, 2, 1, None)["seed"] == 2 and calls[-1] == (5, 2)  # no progress: run


def test_a_resumed_job_gives_the_same_report_as_a_fresh_one(job, adaptation_result) -> None:
    """A job read back from the progress directory is JSON (lists, string keys): the suite's
    aggregation must not see a difference."""
    fresh, _ = adaptation_result
    resumed = run_adaptation_benchmark(AdaptationBenchConfig.tiny(), None, jobs=[json.loads(json.dumps(job))])
    for key in ("tables", "summary", "targets", "settings", "best_baselines"):
        assert resumed[key] == fresh[key], key
    assert resumed["part_commits"] == {"this run": 1}


def test_memory_probes_are_kept_per_seed(tmp_path, monkeypatch) -> None:
    from benchmarks.progress import Progress
    from benchmarks.suites import adaptation

    calls = []

    def fake_probe(config, job, only_weakest_eclm=False):
        calls.append((job["seed"], only_weakest_eclm))
        return [{"key": "full model", "adaptation_rss": 100.0},
                {"key": "eclm@weakest", "adaptation_rss": 40.0 + job["seed"]}]

    monkeypatch.setattr(adaptation, "_probe_memory", fake_probe)
    jobs = [{"label_skew": 2, "seed": s} for s in (0, 1)] + [{"label_skew": 5, "seed": 0}]
    kept = Progress(tmp_path / "kept")
    probe, ratios = adaptation._memory(AdaptationBenchConfig.tiny(), jobs, kept)
    again = adaptation._memory(AdaptationBenchConfig.tiny(), jobs, Progress(tmp_path / "kept"))
    assert calls == [(0, False), (1, True)]  # the first job probes every tier, the others eclm's weakest; once
    assert again == (probe, ratios) and ratios == {0: 0.4, 1: 0.41}
    assert kept.keys() == ["memory_skew2_seed0_tiers", "memory_skew2_seed1_weakest"]
