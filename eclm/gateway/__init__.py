"""A bytes-only channel between an untrusted device and its edge actor (docs/security.md).

The device runs its own service behind :class:`DeviceGateway` (HTTP); inside the cluster a
:class:`RemoteDevice` speaks to it with frames of JSON and safetensors bytes, validated as the
typed messages of the device protocol (:mod:`eclm.gateway.wire`).
"""

from eclm.gateway.device_server import DeviceGateway
from eclm.gateway.remote_device import DeviceUnreachable, RemoteDevice, RemoteDeviceError
from eclm.gateway.wire import MalformedFrameError, decode_frame, encode_frame

__all__ = ["DeviceGateway", "DeviceUnreachable", "MalformedFrameError", "RemoteDevice", "RemoteDeviceError",
           "decode_frame", "encode_frame"]
