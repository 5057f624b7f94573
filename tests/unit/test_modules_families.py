"""Modular decomposition per timm family: exactness, sub-model consistency, measured cost table.

Every family is built small (32x32 input, 10 classes) with randomised norm statistics, affine
parameters, biases and layer scales, so that "equals the source model" is not satisfied trivially
by zero biases or tiny residual branches.
"""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import timm
import torch
from torch import nn

from eclm.modules import ModularModel, SubModelSpec, modularize, narrow
from eclm.modules.costs import measure

FAMILIES = {
    "resnet18": ("resnet18", {"channels": (16, 32, 64, 128)}),
    "resnet50": ("resnet50", {"channels": (16, 32, 64, 128)}),
    "vit": ("test_vit", {"img_size": 32}),
    "convnext": ("test_convnext", {}),
    "mobilenetv3": ("mobilenetv3_small_050", {}),
    "efficientnet": ("test_efficientnet", {}),
}
MODULES_PER_LAYER = 4


def randomise_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give norms, biases and layer scales non-trivial values (in place)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(t: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(t.shape, generator=gen)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.running_mean is not None:
                m.running_mean.copy_(rand(m.running_mean, -0.3, 0.3))
                m.running_var.copy_(rand(m.running_var, 0.5, 1.5))
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias":
                p.copy_(rand(p, -0.2, 0.2))
            elif p.ndim == 1:  # norm weights, layer scales (ConvNeXt's gamma starts at 1e-6)
                p.copy_(rand(p, 0.5, 1.5))
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request) -> tuple[nn.Module, ModularModel]:
    """``(source timm model, modular model built from a deep copy of it)``, both in eval mode."""
    torch.manual_seed(0)
    name, kwargs = FAMILIES[request.param]
    source = randomise_(timm.create_model(name, pretrained=False, num_classes=10, **kwargs)).eval()
    modular = modularize(copy.deepcopy(source), modules_per_layer=MODULES_PER_LAYER).eval()
    return source, modular


def random_specs(modular: ModularModel, count: int, seed: int) -> list[SubModelSpec]:
    """Random specs, always including the all-residual (or minimal) one and single modules."""
    rng = random.Random(seed)
    specs = []
    for s in range(count):
        groups = []
        for layer in modular.layers:
            n = layer.n_modules
            lo = 0 if layer.allows_empty else 1
            size = lo if s == 0 else rng.randint(lo, n - 1) if s % 2 else rng.randint(lo, n)
            groups.append(tuple(sorted(rng.sample(range(n), size))))
        specs.append(SubModelSpec(model_id=modular.model_id, groups=groups))
    return specs


def test_dense_modular_and_full_extraction_equal_source(family) -> None:
    source, modular = family
    x = torch.randn(4, 3, 32, 32)

    with torch.no_grad():
        expected = source(x)
        dense = modular(x)
        unit_gates = modular(x, [torch.ones(len(x), n) for n in modular.layer_sizes])
        full = modular.extract(modular.full_spec()).eval()(x)

    assert rel_err(dense, expected) < 1e-4
    assert rel_err(unit_gates, expected) < 1e-4
    assert rel_err(full, expected) < 1e-4


def test_extracted_full_model_is_a_plain_copy(family) -> None:
    source, modular = family
    full = modular.extract(modular.full_spec())

    assert full.state_dict().keys() == source.state_dict().keys()
    for key, tensor in full.state_dict().items():
        assert torch.equal(tensor, source.state_dict()[key]), key
        assert tensor.data_ptr() != modular.backbone.state_dict()[key].data_ptr(), key


def test_submodel_extraction_equals_gated_modular_model(family) -> None:
    _, modular = family
    x = torch.randn(3, 3, 32, 32)
    full_params = sum(p.numel() for p in modular.backbone.parameters())
    with torch.no_grad():
        dense = modular(x)

    for spec in random_specs(modular, count=5, seed=1):
        with torch.no_grad():
            sub = modular.extract(spec).eval()
            gated = modular(x, modular.spec_gates(spec, len(x)))
            extracted = sub(x)

        assert rel_err(extracted, gated) < 1e-4, spec.groups
        if spec.num_modules() < modular.full_spec().num_modules():
            assert sum(p.numel() for p in sub.parameters()) < full_params, spec.groups
            assert rel_err(gated, dense) > 1e-3, spec.groups  # removing modules changes the function


def test_modular_model_is_unchanged_by_extraction_and_gating(family) -> None:
    _, modular = family
    before = {k: v.clone() for k, v in modular.state_dict().items()}
    spec = random_specs(modular, count=2, seed=2)[1]
    x = torch.randn(2, 3, 32, 32)

    with torch.no_grad():
        sub = modular.extract(spec)
        for p in sub.parameters():
            p.add_(1.0)  # the extracted copy must share no storage with the cloud model
        modular(x, modular.spec_gates(spec, len(x)))
        dense_again = modular(x)

    for key, tensor in modular.state_dict().items():
        assert torch.equal(tensor, before[key]), key
    assert torch.isfinite(dense_again).all()


def test_measured_costs_equal_cost_table(family) -> None:
    _, modular = family
    table = modular.costs()
    example = torch.zeros(1, *modular.input_size)

    for spec in [modular.full_spec(), *random_specs(modular, count=4, seed=3)]:
        measured = measure(modular.extract(spec), example)
        predicted = table.total(spec)

        np.testing.assert_array_equal(measured, [predicted[d] for d in table.dims], err_msg=str(spec.groups))


def test_cost_table_is_monotone_in_modules(family) -> None:
    _, modular = family
    table = modular.costs()

    for layer_costs in table.modules:
        assert (layer_costs[:, 0] > 0).all()  # params: each module owns weights
        assert (layer_costs[:, 1] > 0).all()  # flops
    for layer, empty in zip(modular.layers, table.empty, strict=True):
        assert np.isnan(empty).all() != layer.allows_empty


def test_device_side_narrow_equals_cloud_extraction(family) -> None:
    _, modular = family
    rng = random.Random(4)
    x = torch.randn(2, 3, 32, 32)

    for held in random_specs(modular, count=3, seed=5)[1:]:
        new_groups = [
            tuple(sorted(rng.sample(g, rng.randint(0 if layer.allows_empty else min(1, len(g)), len(g)))))
            for layer, g in zip(modular.layers, held.groups, strict=True)
        ]
        new = SubModelSpec(model_id=modular.model_id, groups=new_groups)
        device = modular.extract(held)

        shrunk = narrow(device, modular.layers, held.groups, new.groups).eval()
        cloud = modular.extract(new).eval()

        with torch.no_grad():
            assert torch.equal(shrunk(x), cloud(x)), (held.groups, new.groups)
        assert shrunk.state_dict().keys() == cloud.state_dict().keys()
        for key, tensor in cloud.state_dict().items():
            assert torch.equal(shrunk.state_dict()[key], tensor), key


def test_narrow_rejects_groups_not_held(family) -> None:
    _, modular = family
    held = [(0,)] * len(modular.layers)
    device = modular.extract(SubModelSpec(model_id=modular.model_id, groups=held))

    with pytest.raises(ValueError, match="cannot keep groups"):
        narrow(device, modular.layers, held, [(1,)] * len(modular.layers))


def test_bad_spec_is_rejected(family) -> None:
    _, modular = family
    out_of_range = [tuple(range(layer.n_modules + 1)) for layer in modular.layers]
    wrong_id = SubModelSpec(model_id="other", groups=modular.full_spec().groups)

    with pytest.raises(ValueError, match="out of range"):
        modular.extract(SubModelSpec(model_id=modular.model_id, groups=out_of_range))
    with pytest.raises(ValueError, match="spec is for model"):
        modular.extract(wrong_id)
    with pytest.raises(ValueError, match="layers"):
        modular.extract(SubModelSpec(model_id=modular.model_id, groups=modular.full_spec().groups[:-1]))
    if not all(layer.allows_empty for layer in modular.layers):
        empty = SubModelSpec(model_id=modular.model_id, groups=[()] * len(modular.layers))
        with pytest.raises(ValueError, match="needs at least one module"):
            modular.extract(empty)
