"""Backbone registry, local-only weight loading, unsupported variants, and import hygiene."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import GluMlp
from torch import nn

from eclm.modules import (
    BackboneAdapter,
    adapter_for,
    create_backbone,
    layer_kind,
    modularize,
    register_backbone,
    supported_families,
)

FAMILIES = ("resnet", "vit", "convnext", "mobilenet")
SMALL_RESNET = {"channels": (16, 32, 64, 128), "num_classes": 10}


def _randomise_norms(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)


def test_supported_families_are_registered() -> None:
    assert set(FAMILIES) <= set(supported_families())


@pytest.mark.parametrize(
    ("name", "kwargs", "family"),
    [
        ("resnet18", SMALL_RESNET, "resnet"),
        ("test_vit", {"img_size": 32}, "vit"),
        ("test_convnext", {}, "convnext"),
        ("mobilenetv3_small_050", {}, "mobilenet"),
        ("test_efficientnet", {}, "mobilenet"),
    ],
)
def test_adapter_found_for_each_family(name: str, kwargs: dict, family: str) -> None:
    model = timm.create_model(name, pretrained=False, **kwargs)

    adapter = adapter_for(model)

    assert isinstance(adapter, BackboneAdapter) and adapter.family == family


@pytest.mark.parametrize(
    "make",
    [
        lambda: timm.create_model("test_byobnet", num_classes=10),
        lambda: timm.create_model("test_nfnet", num_classes=10),
        lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten()),
    ],
    ids=["byobnet", "nfnet", "sequential"],
)
def test_unsupported_model_names_supported_families(make) -> None:
    model = make()

    with pytest.raises(ValueError, match="unsupported backbone") as info:
        modularize(model, modules_per_layer=2)

    for family in FAMILIES:
        assert family in str(info.value)


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("resnet50", {"channels": (16, 32, 64, 128), "cardinality": 2, "base_width": 32}, "grouped"),
        ("resnet18", {**SMALL_RESNET, "norm_layer": "layernorm2d"}, "LayerNorm2d"),
        ("test_efficientnet_gn", {}, "GroupNorm"),
        ("test_efficientnet_ln", {}, "LayerNorm"),
        ("vit_tiny_patch16_224", {"img_size": 32, "depth": 1, "mlp_layer": GluMlp}, "GluMlp"),
        ("convnextv2_atto", {"depths": (1, 1, 1, 1)}, "GlobalResponseNormMlp"),
    ],
    ids=["resnext", "resnet_layernorm", "effnet_groupnorm", "effnet_layernorm", "vit_glu", "convnextv2_grn"],
)
def test_variants_that_cannot_split_exactly_are_rejected_up_front(
    name: str, kwargs: dict, match: str
) -> None:
    # These block variants mix hidden channels across groups; they must fail when modularised,
    # not later inside a forward pass or an extraction.
    model = timm.create_model(name, pretrained=False, **kwargs)

    with pytest.raises(ValueError, match=match):
        modularize(model, modules_per_layer=2)


def test_modules_per_layer_below_two_is_rejected() -> None:
    with pytest.raises(ValueError, match="modules_per_layer"):
        modularize("resnet18", modules_per_layer=1, **SMALL_RESNET)


def test_timm_kwargs_with_a_model_instance_are_rejected() -> None:
    with pytest.raises(ValueError, match="model name"):
        modularize(timm.create_model("resnet18", **SMALL_RESNET), modules_per_layer=2, num_classes=5)


def test_pretrained_download_is_refused() -> None:
    with pytest.raises(ValueError, match="pretrained"):
        create_backbone("resnet18", pretrained=True, **SMALL_RESNET)


def test_missing_weights_file_is_reported(tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"

    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        modularize("resnet18", modules_per_layer=2, weights_path=missing, **SMALL_RESNET)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_weights_round_trip(tmp_path: Path, suffix: str) -> None:
    source = timm.create_model("resnet18", pretrained=False, **SMALL_RESNET).eval()
    _randomise_norms(source)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    else:
        torch.save(source.state_dict(), path)
    x = torch.randn(2, 3, 32, 32)

    modular = modularize("resnet18", modules_per_layer=4, weights_path=path, **SMALL_RESNET).eval()

    with torch.no_grad():
        assert torch.equal(modular(x), source(x))
        assert torch.equal(modular.extract(modular.full_spec()).eval()(x), source(x))
    assert modular.arch["name"] == "resnet18"


def test_weights_for_another_model_are_rejected(tmp_path: Path) -> None:
    other = timm.create_model("resnet18", pretrained=False, channels=(16, 32, 64, 128), num_classes=5)
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))

    with pytest.raises(ValueError, match="do not match"):
        create_backbone("resnet18", weights_path=path, **SMALL_RESNET)


def test_unknown_layer_kind_is_reported() -> None:
    with pytest.raises(ValueError, match="unknown layer kind"):
        layer_kind("no_such_kind")


def test_adapter_without_family_cannot_register() -> None:
    class Nameless(BackboneAdapter):
        def module_layers(self, model, n_modules):
            return []

        def chain(self, model):
            return []

    with pytest.raises(ValueError, match="family"):
        register_backbone(Nameless)


def test_importing_the_core_does_not_import_ray() -> None:
    code = "import sys, eclm.modules; bad = {'ray', 'mlflow'} & set(sys.modules); assert not bad, bad"
    root = Path(__file__).resolve().parents[2]

    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )

    assert result.returncode == 0, result.stderr[-2000:]
