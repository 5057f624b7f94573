"""The chain decomposition (stem, blocks..., head) composes to the model, for every family."""

from __future__ import annotations

import pytest
import torch

from eclm.modules import SubModelSpec, modularize

FAMILIES = [
    ("resnet18", {"channels": (8, 16, 32, 64)}),
    ("test_vit", {"img_size": 32}),
    ("test_convnext", {}),
    ("mobilenetv3_small_050", {}),
    ("test_efficientnet", {}),
]


@pytest.mark.parametrize("name, kwargs", FAMILIES)
def test_chain_composes_to_the_model_and_its_sub_models(name, kwargs):
    modular = modularize(name, modules_per_layer=2, num_classes=10, **kwargs).eval()
    spec = SubModelSpec(model_id=modular.model_id, groups=[(0,) for _ in modular.layers])
    x = torch.randn(2, 3, 32, 32)
    for model in (modular.backbone, modular.extract(spec).eval()):
        stages = modular.chain(model)
        assert stages[0][0] == "stem" and stages[-1][0] == "head" and len(stages) >= 3
        with torch.no_grad():
            expected, out = model(x), x
            for _, stage in stages:
                out = stage(out)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_chain_stages_share_the_models_parameters():
    modular = modularize("test_vit", modules_per_layer=2, num_classes=10, img_size=32)
    stage_params = {id(p) for _, stage in modular.chain() for p in stage.parameters()}
    model_params = {id(p) for p in modular.backbone.parameters()}
    assert stage_params == model_params
