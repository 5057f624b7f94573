"""Weight exchange: safetensors payloads and rebuilding sub-models on a device from a skeleton."""

from __future__ import annotations

import struct

import pytest
import torch
from torch import nn

from eclm.modules import (
    MalformedPayloadError,
    ModularModel,
    SubModelSpec,
    modularize,
    pack_state,
    rebuild_submodel,
    skeleton,
    unpack_state,
)
from eclm.modules.exchange import load_into, payload_size, read_header

MODELS = {
    "resnet18": ("resnet18", {"channels": (16, 32, 64, 128)}),
    "vit": ("test_vit", {"img_size": 32}),
    "mobilenetv3": ("mobilenetv3_small_050", {}),
}
N_MODULES = 4


@pytest.fixture(scope="module", params=list(MODELS))
def modular(request) -> ModularModel:
    torch.manual_seed(0)
    name, kwargs = MODELS[request.param]
    model = modularize(name, modules_per_layer=N_MODULES, num_classes=10, **kwargs).eval()
    with torch.no_grad():  # make every module matter (timm zero-initialises last-BN weights)
        for m in model.backbone.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.running_mean.uniform_(-0.3, 0.3)
    return model


def some_spec(modular: ModularModel) -> SubModelSpec:
    """Alternating layers keep the first and last module, or the residual module where allowed."""
    groups = [
        (0, layer.n_modules - 1) if i % 2 == 0 or not layer.allows_empty else ()
        for i, layer in enumerate(modular.layers)
    ]
    return SubModelSpec(model_id=modular.model_id, groups=groups)


def test_pack_unpack_round_trip(modular: ModularModel) -> None:
    spec = some_spec(modular)
    state = modular.extract(spec).state_dict()
    meta = {"device": "d7", "round": 3, "samples": 120, "loss": [0.5, 0.25]}

    data = pack_state(state, spec, meta)
    back, back_spec, back_meta = unpack_state(data)

    assert back.keys() == state.keys()
    for key, tensor in state.items():
        assert back[key].dtype == tensor.dtype and torch.equal(back[key], tensor), key
    assert back_spec == spec
    assert back_meta == meta
    assert payload_size(back) == payload_size(state) < len(data)


def test_pack_without_spec_or_meta() -> None:
    state = {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(4)}

    back, spec, meta = unpack_state(pack_state(state))

    assert spec is None and meta == {}
    assert torch.equal(back["w"], state["w"]) and torch.equal(back["n"], state["n"])


def _valid_payload() -> bytes:
    return pack_state({"w": torch.randn(8, 8)}, SubModelSpec(model_id="m", groups=[(0,)]), {"k": 1})


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda d: b"",
        lambda d: b"\x01\x02\x03",
        lambda d: b"this is not a safetensors payload at all",
        lambda d: d[: len(d) // 2],
        lambda d: d[:-7],
        lambda d: struct.pack("<Q", 5) + b"{{{{{",
        lambda d: struct.pack("<Q", 2) + b"{}" + b"\x00" * 3,
        lambda d: d.replace(b"model_id", b"model_xx"),  # same length: only the spec is invalid
    ],
    ids=[
        "empty",
        "short",
        "garbage",
        "half",
        "truncated_tail",
        "bad_json",
        "no_tensors_trailing",
        "bad_spec",
    ],
)
def test_malformed_payload_is_rejected(corrupt) -> None:
    data = corrupt(_valid_payload())

    with pytest.raises(MalformedPayloadError):
        unpack_state(data)


def test_header_is_read_without_loading_tensors() -> None:
    header = read_header(_valid_payload())

    assert SubModelSpec.from_json(header["eclm.spec"]) == SubModelSpec(model_id="m", groups=[(0,)])


def test_rebuilt_submodel_equals_cloud_extraction(modular: ModularModel) -> None:
    spec = some_spec(modular)
    cloud_sub = modular.extract(spec).eval()
    data = pack_state(cloud_sub.state_dict(), spec)
    x = torch.randn(3, 3, 32, 32)

    state, received_spec, _ = unpack_state(data)
    skel = skeleton(modular.arch, N_MODULES)
    device_sub = rebuild_submodel(skel, received_spec, state).eval()

    assert skel.model_id == modular.model_id
    assert all(not t.is_meta for t in device_sub.state_dict().values())
    with torch.no_grad():
        assert torch.equal(device_sub(x), cloud_sub(x))


def test_skeleton_allocates_no_weights(modular: ModularModel) -> None:
    skel = skeleton(modular.arch, N_MODULES)

    assert all(p.is_meta for p in skel.backbone.parameters())
    assert skel.layer_sizes == modular.layer_sizes


def test_missing_tensor_is_rejected(modular: ModularModel) -> None:
    spec = some_spec(modular)
    state = modular.extract(spec).state_dict()
    state.pop(next(k for k in state if k.endswith("weight")))

    with pytest.raises(ValueError, match="do not match|missing"):
        rebuild_submodel(skeleton(modular.arch, N_MODULES), spec, state)


def test_wrong_shape_is_rejected(modular: ModularModel) -> None:
    small = some_spec(modular)
    state = modular.extract(modular.full_spec()).state_dict()  # full weights for a narrower spec

    with pytest.raises(ValueError, match="do not match"):
        rebuild_submodel(skeleton(modular.arch, N_MODULES), small, state)


def test_load_into_reports_mismatch(modular: ModularModel) -> None:
    sub = modular.extract(some_spec(modular))
    state = sub.state_dict()
    state["not_a_key"] = torch.zeros(1)

    with pytest.raises(MalformedPayloadError, match="does not match"):
        load_into(sub, state)
