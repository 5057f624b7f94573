"""Malformed and crafted uploads: each is rejected alone while the honest uploads of its round merge.

Every case takes a real upload of device ``d2`` (from the real services, in this process) and
breaks it in one way an attacker or a faulty device could: the payload, its header, the spec,
the tensors, or the facts the device claims. The round also carries honest uploads of ``d0`` and
``d1``; the merge must reject ``d2`` with a reason, accept both honest devices, and never raise.
"""

from __future__ import annotations

import json
import math
import struct

import pytest
import torch

from eclm.campaign.messages import AttributedUpdate, DeviceMetrics, DeviceUpdate
from eclm.config import PlatformConfig
from eclm.modules import SubModelSpec, pack_state, unpack_state
from eclm.pipelines.cloud_service import CloudService
from eclm.pipelines.edge_service import EdgeService

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def round_(tmp_path_factory):
    cfg = PlatformConfig.from_dict({
        "name": "crafted", "workdir": str(tmp_path_factory.mktemp("crafted")),
        "data": {"source": "digits", "image_size": 16, "num_devices": 3, "classes_per_device": 3,
                 "samples_per_device": [30, 40]},
        "backbone": {"name": "resnet18", "kwargs": {"channels": [8, 8, 16, 16]}, "modules_per_layer": 2},
        "devices": [{"name": "d0"}, {"name": "d1"}, {"name": "d2", "params_fraction": 0.6}],
        # The dense delta format (float16 differences of every weight); the module-sparse int8 format
        # has its crafted cases in test_pipelines_sparse_exchange.py.
        "adaptation": {"epochs": 1, "trainable": "all", "delta_dtype": "float16"},
        # Every honest candidate passes (the statistical screen is tested on its own elsewhere): a
        # rejection can only come from the crafted upload itself.
        "merge": {"tolerance": 1.0, "device_tolerance": 1.0, "step_backoff": 0, "acceptance": "threshold",
                  "screen": {"enabled": False}},
        "tracking": {"enabled": False},
    })
    cloud = CloudService(cfg)
    edges = [EdgeService(cfg, i) for i in range(3)]
    selector, costs = cloud.selector_payload(), cloud.info().costs
    for e in edges:
        e.install(cloud.derive(e.summary(selector)), costs)
    updates = {e.name: e.adapt() for e in edges}
    items = {e.name: AttributedUpdate(channel=e.name, issued=e.spec, enrolled_classes=e.classes, update=updates[e.name])
             for e in edges}
    return cloud, cloud.snapshot(), items


def _with_state(item: AttributedUpdate, change) -> AttributedUpdate:
    state, spec, meta = unpack_state(item.update.payload)
    state = dict(state)
    spec, meta = change(state, spec, meta) or (spec, meta)
    return _with_payload(item, pack_state(state, spec, meta))


def _with_payload(item: AttributedUpdate, payload: bytes) -> AttributedUpdate:
    return item.model_copy(update={"update": item.update.model_copy(update={"payload": payload})})


def _with(item: AttributedUpdate, **fields) -> AttributedUpdate:
    """Fields set without validation, as a device that skips it (or an unpickled reply) would."""
    raw = dict(item.update) | fields
    return item.model_copy(update={"update": DeviceUpdate.model_construct(**raw)})


def _first_float(state: dict) -> str:
    return next(k for k, v in state.items() if v.is_floating_point() and v.ndim > 1)


def _largest_change(state: dict) -> str:
    """The tensor with the largest entry: its change is not zero, whatever sub-model the device got
    (a device's measured resources decide its spec, and a module it kept untouched sends zeros)."""
    return max((k for k, v in state.items() if v.is_floating_point() and v.ndim > 1),
               key=lambda k: float(state[k].float().abs().max()))


def _set(key_fn, value_fn):
    def change(state, spec, meta):
        key = key_fn(state)
        state[key] = value_fn(state[key])
    return change


def _spec(groups_fn=None, model_id=None):
    def change(state, spec, meta):
        return SubModelSpec(model_id=model_id or spec.model_id, groups=groups_fn(spec) if groups_fn else spec.groups), meta
    return change


def _meta(**updates):
    def change(state, spec, meta):
        return spec, {**meta, **updates}
    return change


def _header_json(payload: bytes, text: bytes) -> bytes:
    (n,) = struct.unpack("<Q", payload[:8])
    return struct.pack("<Q", len(text)) + text + payload[8 + n:]


CASES = {
    "garbage bytes": lambda i: _with_payload(i, b"\x07 not a safetensors payload"),
    "empty payload": lambda i: _with_payload(i, b""),
    "truncated payload": lambda i: _with_payload(i, i.update.payload[: len(i.update.payload) // 2]),
    "header length beyond the payload": lambda i: _with_payload(i, struct.pack("<Q", 10**12) + i.update.payload[8:]),
    "header not JSON": lambda i: _with_payload(i, _header_json(i.update.payload, b"{not json")),
    "a pickle instead of safetensors": lambda i: _with_payload(i, b"\x80\x04\x95\x10\x00cos\nsystem\n."),
    "no spec": lambda i: _with_payload(i, pack_state(unpack_state(i.update.payload)[0])),
    "spec of another model": _spec(model_id="f" * 16),
    "spec with a layer too many": _spec(lambda s: (*s.groups, (0,))),
    "spec with a module index out of range": _spec(lambda s: ((0, 1, 7), *s.groups[1:])),
    "spec holding modules never issued": _spec(lambda s: tuple((0, 1) for _ in s.groups)),
    "metadata a JSON list": None,  # built below (pack_state refuses a list)
    "header names another device": _meta(device="d0"),
    "unknown update kind": _meta(kind="gradient"),
    "a NaN": _set(_first_float, lambda v: v.clone().fill_(math.nan)),
    "an inf": _set(_first_float, lambda v: v.clone().fill_(math.inf)),
    "wrong shape": _set(_first_float, lambda v: torch.zeros(v.shape[0] + 1, *v.shape[1:])),
    "float64 tensor": _set(_first_float, lambda v: v.double()),
    "integer tensor": _set(_first_float, lambda v: v.to(torch.int32)),
    "huge change": _set(_largest_change, lambda v: v * 1e6),
    "missing tensor": lambda i: _with_state(i, lambda s, *_: [s.pop(_first_float(s)), None][1]),
    "extra tensor": lambda i: _with_state(i, lambda s, *_: s.update({"backdoor.weight": torch.zeros(3)})),
    "claims to be another device": lambda i: i.model_copy(update={"update": i.update.model_copy(
        update={"device": "d1" if i.channel == "d0" else "d0"})}),
    "importance with a row too few": lambda i: _with(i, importance=i.update.importance[:-1]),
    "importance rows too long": lambda i: _with(i, importance=tuple((*r, 0.0) for r in i.update.importance)),
    "importance None": lambda i: _with(i, importance=None),
    "importance a None entry": lambda i: _with(i, importance=((None, 1.0), *i.update.importance[1:])),
    "importance -1e6": lambda i: _with(i, importance=((-1e6, 1.0), *i.update.importance[1:])),
    "importance 1e9": lambda i: _with(i, importance=((1e9, 0.0), *i.update.importance[1:])),
    "importance rows not summing to one": lambda i: _with(i, importance=tuple((0.0,) * len(r) for r in i.update.importance)),
    "inf samples": lambda i: _with(i, num_samples=math.inf),
    "a million samples": lambda i: _with(i, num_samples=1_000_000),
    "zero samples": lambda i: _with(i, num_samples=0),
    "classes it never enrolled with": lambda i: _with(i, classes=(*i.update.classes,
                                                                  min(set(range(10)) - set(i.update.classes)))),
    "NaN metrics": lambda i: _with(i, metrics=DeviceMetrics.model_construct(acc_after=math.nan)),
}


def _meta_list(item: AttributedUpdate) -> AttributedUpdate:
    state, spec, _ = unpack_state(item.update.payload)
    payload = pack_state(state, spec)
    (n,) = struct.unpack("<Q", payload[:8])
    header = json.loads(payload[8:8 + n])
    header["__metadata__"]["eclm.meta"] = json.dumps(["not", "a", "mapping"])
    text = json.dumps(header).encode()
    return _with_payload(item, struct.pack("<Q", len(text)) + text + payload[8 + n:])


CASES["metadata a JSON list"] = _meta_list


def _build(case: str, item: AttributedUpdate) -> AttributedUpdate:
    make = CASES[case]
    if make.__code__.co_argcount == 3:  # a change of the tensors, spec or metadata
        return _with_state(item, make)
    return make(item)


def test_there_are_at_least_thirty_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_crafted_upload_is_rejected_alone_and_the_honest_ones_merge(round_, case):
    cloud, start, items = round_
    cloud.restore(start)
    crafted = _build(case, items["d2"])

    outcome = cloud.merge([items["d0"], items["d1"], crafted])

    assert outcome.changed, outcome.reason
    assert set(outcome.accepted) == {"d0", "d1"}, (case, outcome.rejected)
    assert "d2" in outcome.rejected and outcome.rejected["d2"], case


def test_a_duplicate_upload_from_one_device_keeps_only_the_first(round_):
    cloud, start, items = round_
    cloud.restore(start)
    outcome = cloud.merge([items["d0"], items["d1"], items["d1"]])
    assert set(outcome.accepted) == {"d0", "d1"} and "d1 (duplicate upload)" in outcome.rejected


def test_a_round_of_only_crafted_uploads_leaves_the_cloud_bit_identical(round_):
    cloud, start, items = round_
    cloud.restore(start)
    digest = cloud.state_digest()
    outcome = cloud.merge([_build("a NaN", items["d2"]), _build("claims to be another device", items["d0"])])
    assert outcome.decision == "reject" and cloud.state_digest() == digest and cloud.version == start.version
