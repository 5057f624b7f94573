"""SplitConfig validation, factories, and the Ray-free import guarantee."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

import eclm.split as split
from eclm.split import (
    BlockCosts,
    CodecConfig,
    FixedEqualSampler,
    GlobalSampler,
    MaskEncodedSparsification,
    SplitConfig,
    SplitDevice,
    build_codec,
    build_sampler,
    optimizer_settings,
    plan_cuts,
)

REPO = Path(__file__).resolve().parents[2]


def test_importing_split_does_not_import_ray() -> None:
    code = "import eclm.split, sys; assert 'ray' not in sys.modules, 'ray imported'"

    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stderr


def test_public_api_is_exported() -> None:
    assert all(hasattr(split, name) for name in split.__all__)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"codec": {"name": "topk"}}, "requires parameter"),
        ({"codec": {"name": "identity", "bits": 2}}, "does not take"),
        ({"codec": {"name": "mask_encoded", "ratio": 1.0, "bits": 2}}, "ratio"),
        ({"codec": {"name": "gzip"}}, "name"),
        ({"cut_policy": "fixed"}, "requires fixed_cut"),
        ({"cut_policy": "edgesplit", "fixed_cut": 2}, "only used with"),
        ({"global_batch": 0}, "global_batch"),
        ({"sampler": "random"}, "sampler"),
        ({"learning_rate": 0.1}, "learning_rate"),
        ({"momentum": 1.0}, "momentum"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(payload: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SplitConfig.model_validate(payload)


def test_factories_build_what_the_config_names() -> None:
    config = SplitConfig.model_validate(
        {
            "codec": {"name": "mask_encoded", "ratio": 0.99, "bits": 2},
            "sampler": "fixed_equal",
            "global_batch": 32,
            "lr": 0.01,
            "momentum": 0.5,
            "seed": 3,
        }
    )

    codec = build_codec(config.codec)
    sampler = build_sampler(config, [10, 20])

    assert isinstance(codec, MaskEncodedSparsification) and (codec.ratio, codec.bits) == (0.99, 2)
    assert isinstance(sampler, FixedEqualSampler) and (sampler.global_batch, sampler.seed) == (32, 3)
    assert optimizer_settings(config).lr == 0.01
    assert isinstance(build_sampler(SplitConfig(), [5]), GlobalSampler)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("identity", {}),
        ("topk", {"ratio": 0.9}),
        ("randomized_topk", {"ratio": 0.9, "seed": 4}),
        ("uniform_quantization", {"bits": 3}),
        ("mask_encoded", {"ratio": 0.9, "bits": 2, "signed": True}),
    ],
)
def test_every_codec_name_builds(name: str, params: dict) -> None:
    codec = build_codec(CodecConfig(name=name, **params))

    assert codec.name == name


@pytest.mark.parametrize("objective", ["epoch", "iteration"])
@pytest.mark.parametrize(("policy", "fixed_cut"), [("edgesplit", None), ("uniform", None), ("fixed", 2)])
def test_plan_cuts_follows_the_policy(policy: str, fixed_cut: int | None, objective: str) -> None:
    costs = BlockCosts([1e8] * 3, [4e4, 2e4, 1e4, 1e2], [1e5] * 3, [1e4] * 3, state_bytes=[1e4] * 3)
    devices = [SplitDevice(1e11, 1e9, 16), SplitDevice(1e9, 1e9, 16)]
    config = SplitConfig(cut_policy=policy, fixed_cut=fixed_cut, edgesplit_objective=objective, global_batch=32,
                         sampler="fixed_equal")

    plan = plan_cuts(config, costs, devices, 2e5, 1e12, client_sizes=[40, 40])

    if policy == "fixed":
        assert plan.cuts == (2, 2)
    if policy == "uniform":
        assert len(set(plan.cuts)) == 1
    assert sum(plan.bandwidths) == pytest.approx(2e5)
    assert plan.epoch_time is not None and plan.epoch_time > 0
    assert plan.objective == (objective if policy != "fixed" else "iteration")


def test_epoch_objective_needs_the_client_sizes() -> None:
    costs = BlockCosts([1e8] * 3, [4e4, 2e4, 1e4, 1e2], [1e5] * 3, [1e4] * 3)
    devices = [SplitDevice(1e11, 1e9, 16), SplitDevice(1e9, 1e9, 16)]

    with pytest.raises(ValueError, match="client_sizes"):
        plan_cuts(SplitConfig(), costs, devices, 2e5, 1e12)
    assert plan_cuts(SplitConfig(edgesplit_objective="iteration"), costs, devices, 2e5, 1e12).epoch_time is None
