"""The device gateway's frames: every protocol message survives the trip; anything else is refused.

A frame is JSON plus byte blobs, decoded by the declared type of the call (never unpickled).
"""

from __future__ import annotations

import json
import math
import pickle
import struct

import pytest
import torch

from eclm.campaign.messages import (
    DeviceMetrics,
    DeviceSummary,
    DeviceUpdate,
    HeldModel,
    InstallReport,
    Resources,
    StreamPosition,
    SubModelPackage,
)
from eclm.gateway.wire import (
    CALLS,
    MalformedFrameError,
    decode_call,
    decode_frame,
    encode_call,
    encode_frame,
    return_type,
)
from eclm.modules.spec import SubModelSpec, TrainableSpec

SPEC = SubModelSpec(model_id="f00d", groups=((0, 1), (), (2,)))


def _update(**fields) -> DeviceUpdate:
    base = {"device": "d0", "payload": b"\x00safetensors\xff" * 10, "importance": ((0.5, 0.5), (1.0,), (1.0,)),
            "num_samples": 40, "classes": (1, 2), "metrics": DeviceMetrics(acc_before=0.5, acc_after=0.75)}
    return DeviceUpdate(**(base | fields))


MESSAGES = [
    Resources(gflops=2.5, memory_mb=100.0),
    StreamPosition(device="d0", step=3, corruption="noise", severity=2, classes=(1, 2)),
    DeviceSummary(device="d0", importance=((0.25, 0.75),), resources=Resources(), num_samples=30, classes=(0, 4),
                  held=HeldModel(spec=SPEC, version=2)),
    SubModelPackage(device="d0", spec=SPEC, payload=bytes(range(256)) * 4, version=5, cost={"params": 12.0},
                    trainable=TrainableSpec(groups=((1,), (), ()), head_rows=(1, 2), shared=False)),
    InstallReport(device="d0", params=1234, modules=3),
    _update(),
]


@pytest.mark.parametrize("message", MESSAGES, ids=[type(m).__name__ for m in MESSAGES])
def test_every_protocol_message_round_trips_exactly(message):
    frame = encode_frame(message)
    assert decode_frame(frame, type(message)) == message
    assert b"pickle" not in frame and frame[8:].count(b"\x80\x04") == 0  # JSON and raw bytes only


def test_a_call_round_trips_with_its_arguments_validated_by_type():
    package = MESSAGES[3]
    args = decode_call("install", encode_call("install", (package, {"base": [1.0, 2.0]})))
    assert args == [package, {"base": [1.0, 2.0]}] and isinstance(args[0], SubModelPackage)
    assert decode_call("summary", encode_call("summary", (None,))) == [None]
    assert decode_call("summary", encode_call("summary", (b"\x00\x01",))) == [b"\x00\x01"]
    assert decode_call("adapt", encode_call("adapt", ())) == []
    assert return_type("adapt") is DeviceUpdate and set(CALLS) >= {"summary", "install", "adapt", "advance"}


def _frame(value, blobs: list[bytes] = ()) -> bytes:
    header = json.dumps({"value": value, "blobs": [len(b) for b in blobs]}).encode()
    return struct.pack("<Q", len(header)) + header + b"".join(blobs)


class _Boom:
    def __reduce__(self):
        return (print, ("pwned",))


BAD_FRAMES = {
    "empty": b"",
    "a pickle instead of a frame": pickle.dumps(_Boom()),
    "truncated": encode_frame(MESSAGES[5])[:-7],
    "header length beyond the frame": struct.pack("<Q", 10**9) + b"{}",
    "header not JSON": struct.pack("<Q", 9) + b"{not json",
    "no value": struct.pack("<Q", 12) + b'{"blobs":[]}',
    "blob reference out of range": _frame({"device": "d0", "payload": {"$blob": 3}}),
    "negative blob size": struct.pack("<Q", 28) + b'{"value":null,"blobs":[-1]} ',
    "extra bytes after the blobs": _frame(None) + b"trailing",
    "an unknown field": _frame({"device": "d0", "step": 1, "evil": 1}),
    "a negative step": _frame({"device": "d0", "step": -1}),
    "NaN through the JSON": struct.pack("<Q", 42) + b'{"value":{"device":"d0","step":NaN},"blobs":[]}',
}


@pytest.mark.parametrize("case", sorted(BAD_FRAMES))
def test_a_malformed_frame_is_refused_with_a_reason(case):
    with pytest.raises(MalformedFrameError):
        decode_frame(BAD_FRAMES[case], StreamPosition)


def test_an_update_with_implausible_claims_is_refused_by_the_message_validators():
    frame = encode_frame(_update())
    (n,) = struct.unpack("<Q", frame[:8])
    header = json.loads(frame[8:8 + n])
    header["value"]["importance"] = [[1e9, 0.0], [1.0], [1.0]]
    text = json.dumps(header).encode()
    with pytest.raises(MalformedFrameError, match="not a valid DeviceUpdate"):
        decode_frame(struct.pack("<Q", len(text)) + text + frame[8 + n:], DeviceUpdate)


def test_oversized_frames_are_refused_before_decoding():
    with pytest.raises(MalformedFrameError, match="exceeds the limit"):
        decode_frame(encode_frame(b"x" * 2000), bytes, max_bytes=1000)


@pytest.mark.parametrize("value", [torch.zeros(3), _Boom(), {1: "int key"}, math.inf, {"x": {1, 2}}])
def test_only_plain_data_and_bytes_can_be_sent(value):
    with pytest.raises((TypeError, ValueError)):
        encode_frame(value)


def test_unknown_calls_and_surplus_arguments_are_refused():
    with pytest.raises(ValueError, match="not a gateway call"):
        encode_call("split_forward", ())
    with pytest.raises(ValueError, match="at most 0"):
        encode_call("adapt", (1,))
    with pytest.raises(MalformedFrameError, match="at most 1"):
        decode_call("advance", encode_frame([1, 2]))
    with pytest.raises(MalformedFrameError, match="invalid argument"):
        decode_call("advance", encode_frame(["not a number"]))
