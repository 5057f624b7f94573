"""Module-wise merge of device updates into the cloud backbone (ECLM, arXiv 2311.11083; docs/architecture.md)."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from torch import Tensor

from eclm.modules import (
    ModularModel,
    ModuleUpdate,
    SubModelSpec,
    expected_shape,
    merge_module_updates,
    modularize,
    narrow,
    tensor_owner,
)

MODELS = {
    "resnet18": ("resnet18", {"channels": (16, 32, 64, 128)}),
    "vit": ("test_vit", {"img_size": 32}),  # qkv rows split three ways per head group
    "mobilenetv3": ("mobilenetv3_small_050", {}),  # squeeze-excite sliced along expanded channels
}


@pytest.fixture(scope="module", params=list(MODELS))
def base_model(request) -> ModularModel:
    torch.manual_seed(0)
    name, kwargs = MODELS[request.param]
    return modularize(name, modules_per_layer=4, num_classes=10, **kwargs).eval()


@pytest.fixture
def modular(base_model: ModularModel) -> ModularModel:
    """A private copy: merge tests load new weights into it."""
    return copy.deepcopy(base_model)


def random_spec(
    modular: ModularModel, rng: random.Random, must_hold: list[int] | None = None
) -> SubModelSpec:
    """A random spec (some layers empty where allowed), containing ``must_hold[layer]`` if given."""
    groups = []
    for li, layer in enumerate(modular.layers):
        n = layer.n_modules
        lo = 0 if layer.allows_empty and must_hold is None else 1
        g = set(rng.sample(range(n), rng.randint(lo, n - 1)))
        if must_hold is not None:
            g.add(must_hold[li])
        groups.append(tuple(sorted(g)))
    return SubModelSpec(model_id=modular.model_id, groups=groups)


def device_state(modular: ModularModel, spec: SubModelSpec, seed: int) -> dict[str, Tensor]:
    """The device's sub-model weights after local training (simulated by a perturbation)."""
    gen = torch.Generator().manual_seed(seed)
    state = modular.extract(spec).state_dict()
    return {
        k: v + 0.1 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone()
        for k, v in state.items()
    }


def apply_merge(modular: ModularModel, updates: list[ModuleUpdate], **kwargs) -> dict[str, Tensor]:
    merged = merge_module_updates(modular.backbone.state_dict(), modular.layers, updates, **kwargs)
    modular.backbone.load_state_dict(merged)
    return merged


def test_untouched_modules_and_tensors_stay_bit_identical(modular: ModularModel) -> None:
    spec = random_spec(modular, random.Random(1))
    before = {k: v.clone() for k, v in modular.backbone.state_dict().items()}
    update = ModuleUpdate(
        "d0", spec, device_state(modular, spec, 1), [[1.0] * n for n in modular.layer_sizes], 10
    )

    apply_merge(modular, [update])

    after = modular.backbone.state_dict()
    changed = 0
    for key, old in before.items():
        owner = tensor_owner(modular.layers, key)
        if key not in update.state:
            assert torch.equal(after[key], old), key
        elif owner is not None:
            idx, rel = owner
            dim, full_owner = modular.layers[idx].sliced[rel]
            dropped = ~torch.isin(full_owner, torch.tensor(spec.groups[idx]))
            untouched = torch.nonzero(dropped).flatten()
            assert torch.equal(after[key].index_select(dim, untouched), old.index_select(dim, untouched)), key
            changed += int(not torch.equal(after[key], old))
    assert changed > 0  # the held modules did change
    assert spec.num_modules() < modular.full_spec().num_modules()  # some modules were not held


def test_single_device_update_lands_exactly_in_cloud_slices(modular: ModularModel) -> None:
    spec = random_spec(modular, random.Random(2))
    state = device_state(modular, spec, 2)
    importance = [[random.Random(li).random() for _ in range(n)] for li, n in enumerate(modular.layer_sizes)]

    apply_merge(modular, [ModuleUpdate("d0", spec, state, importance, 7)])

    extracted = modular.extract(spec).state_dict()
    assert extracted.keys() == state.keys()
    for key, tensor in state.items():
        assert torch.equal(extracted[key], tensor), key


def test_merge_with_no_updates_returns_cloud_state(modular: ModularModel) -> None:
    cloud = modular.backbone.state_dict()

    merged = merge_module_updates(cloud, modular.layers, [])

    assert merged.keys() == cloud.keys()
    assert all(merged[k] is cloud[k] for k in cloud)


def _weight(weighting: str, importance: float, samples: int) -> float:
    return {
        "importance": importance,
        "importance_samples": importance * samples,
        "samples": float(samples),
        "uniform": 1.0,
    }[weighting]


@pytest.mark.parametrize("weighting", ["importance", "importance_samples", "samples", "uniform"])
def test_shared_module_is_weighted_average_of_two_devices(modular: ModularModel, weighting: str) -> None:
    rng = random.Random(3)
    common = [rng.randrange(n) for n in modular.layer_sizes]  # one module per layer both devices hold
    specs = [random_spec(modular, rng, must_hold=common) for _ in range(2)]
    states = [device_state(modular, s, seed) for seed, s in enumerate(specs, start=10)]
    importances = [[[rng.uniform(0.05, 1.0) for _ in range(n)] for n in modular.layer_sizes] for _ in specs]
    samples = [30, 90]
    updates = [ModuleUpdate(f"d{i}", specs[i], states[i], importances[i], samples[i]) for i in range(2)]
    common_spec = SubModelSpec(model_id=modular.model_id, groups=[(g,) for g in common])

    apply_merge(modular, updates, weighting=weighting)

    # Both devices' values of the common modules, read through device-side narrowing.
    device_views = []
    for spec, state in zip(specs, states, strict=True):
        sub = modular.extract(spec)
        sub.load_state_dict(state)
        device_views.append(narrow(sub, modular.layers, spec.groups, common_spec.groups).state_dict())
    merged_view = modular.extract(common_spec).state_dict()
    for key, merged in merged_view.items():
        if not merged.is_floating_point():
            continue
        owner = tensor_owner(modular.layers, key)
        if owner is None:  # shared tensor: sample-weighted average
            w = [float(n) for n in samples]
        else:
            idx = owner[0]
            w = [
                _weight(weighting, imp[idx][common[idx]], n)
                for imp, n in zip(importances, samples, strict=True)
            ]
        expected = (w[0] * device_views[0][key] + w[1] * device_views[1][key]) / (w[0] + w[1])
        assert torch.allclose(merged, expected, atol=1e-6, rtol=0), key


def test_shared_tensors_are_averaged_by_sample_count(modular: ModularModel) -> None:
    specs = [modular.full_spec(), random_spec(modular, random.Random(4), must_hold=[0] * len(modular.layers))]
    states = [device_state(modular, s, seed) for seed, s in enumerate(specs, start=20)]
    ones = [[1.0] * n for n in modular.layer_sizes]
    updates = [
        ModuleUpdate("a", specs[0], states[0], ones, 10),
        ModuleUpdate("b", specs[1], states[1], ones, 30),
    ]

    merged = apply_merge(modular, updates)

    unsplit = [
        k for k in states[1] if tensor_owner(modular.layers, k) is None and states[1][k].is_floating_point()
    ]
    assert unsplit
    for key in unsplit:
        expected = 0.25 * states[0][key] + 0.75 * states[1][key]
        assert torch.allclose(merged[key], expected, atol=1e-6, rtol=0), key


def test_module_held_by_one_of_two_devices_takes_its_weights(modular: ModularModel) -> None:
    # Device a holds module 0 only, device b module 1 only, in every layer.
    specs = [SubModelSpec(model_id=modular.model_id, groups=[(g,)] * len(modular.layers)) for g in (0, 1)]
    states = [device_state(modular, s, seed) for seed, s in enumerate(specs, start=30)]
    imp = [[0.5] * n for n in modular.layer_sizes]

    apply_merge(
        modular,
        [ModuleUpdate(f"d{g}", s, st, imp, 5) for g, s, st in zip((0, 1), specs, states, strict=True)],
    )

    for spec, state in zip(specs, states, strict=True):
        extracted = modular.extract(spec).state_dict()
        for key, tensor in state.items():
            if tensor_owner(modular.layers, key) is not None:
                assert torch.equal(extracted[key], tensor), key


def test_expected_shape_matches_extracted_submodel(base_model: ModularModel) -> None:
    spec = random_spec(base_model, random.Random(5))
    cloud = base_model.backbone.state_dict()

    for key, tensor in base_model.extract(spec).state_dict().items():
        if key in cloud:
            assert expected_shape(base_model.layers, cloud[key].shape, key, spec) == tensor.shape, key


def test_merge_does_not_modify_its_inputs(base_model: ModularModel) -> None:
    spec = random_spec(base_model, random.Random(6))
    cloud = {k: v.clone() for k, v in base_model.backbone.state_dict().items()}
    state = device_state(base_model, spec, 6)
    state_copy = {k: v.clone() for k, v in state.items()}

    merge_module_updates(
        cloud,
        base_model.layers,
        [ModuleUpdate("d", spec, state, [[1.0] * n for n in base_model.layer_sizes], 3)],
    )

    assert all(torch.equal(cloud[k], v) for k, v in base_model.backbone.state_dict().items())
    assert all(torch.equal(state[k], v) for k, v in state_copy.items())
