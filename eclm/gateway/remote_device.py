"""The cluster side of the gateway: a device endpoint that reaches its device over HTTP.

:class:`RemoteDevice` has the methods of the device protocol
(:class:`~eclm.campaign.endpoints.DeviceEndpoint`, local adaptation), so the coordinator, an
in-process fleet or a Ray edge actor use it exactly like an ``EdgeService``. Each call goes to the
device's :class:`~eclm.gateway.device_server.DeviceGateway` as a frame of JSON and bytes; the
reply is decoded and validated as the message type the protocol declares
(:mod:`eclm.gateway.wire`), so nothing the device sends is unpickled or executed. The device's
identity is the channel: a reply naming another device is refused.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from eclm.gateway.wire import MAX_FRAME_BYTES, MalformedFrameError, decode_frame, encode_call, return_type


class RemoteDeviceError(RuntimeError):
    """The device refused a call or failed while running it (its error type and message)."""

    def __init__(self, device: str, method: str, error_type: str, message: str) -> None:
        super().__init__(f"device {device} ({method}): {error_type}: {message}")
        self.error_type = error_type


class DeviceUnreachable(ConnectionError):
    """The device's gateway did not answer (down, wrong address, or timed out)."""


class RemoteDevice:
    """A device behind a :class:`~eclm.gateway.device_server.DeviceGateway`.

    Args:
        name: The device's name in the campaign (what its replies must call it).
        url: Base URL of its gateway, e.g. ``http://127.0.0.1:8470``.
        timeout_s: Seconds one call may take (adaptation included).
        max_bytes: Largest reply accepted.
    """

    def __init__(self, name: str, url: str, timeout_s: float = 600.0, max_bytes: int = MAX_FRAME_BYTES) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"gateway URL must be http(s)://host:port, got {url!r}")
        self.name, self.url, self.timeout_s, self.max_bytes = name, url.rstrip("/"), timeout_s, max_bytes
        self.bytes_sent = self.bytes_received = 0

    def _call(self, method: str, *args: Any) -> Any:
        body = encode_call(method, args)
        request = urllib.request.Request(f"{self.url}/v1/{method}", data=body, method="POST",
                                         headers={"Content-Type": "application/octet-stream"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as reply:  # noqa: S310 - http(s) only
                data = reply.read(self.max_bytes + 1)
        except urllib.error.HTTPError as err:
            raise self._refused(method, err) from None
        except (urllib.error.URLError, OSError) as err:
            raise DeviceUnreachable(f"device {self.name} at {self.url} ({method}): {err}") from None
        self.bytes_sent += len(body)
        self.bytes_received += len(data)
        value = decode_frame(data, return_type(method), max_bytes=self.max_bytes)
        claimed = getattr(value, "device", self.name)
        if claimed != self.name:
            raise MalformedFrameError(f"device {self.name}: the reply to {method} claims to come from {claimed!r}")
        return value

    def _refused(self, method: str, err: urllib.error.HTTPError) -> RemoteDeviceError:
        try:
            detail = json.loads(err.read(64 * 1024))
            error_type, message = str(detail["error_type"]), str(detail["message"])
        except (ValueError, KeyError, TypeError):
            error_type, message = f"HTTP {err.code}", str(err.reason)
        return RemoteDeviceError(self.name, method, error_type, message)

    # ------------------------------------------------------------------ the device protocol
    def advance(self, steps: int = 1):
        return self._call("advance", steps)

    def drift(self):
        return self._call("drift")

    def profile(self):
        return self._call("profile")

    def set_resources(self, changes):
        return self._call("set_resources", changes)

    def summary(self, selector_payload: bytes | None = None):
        return self._call("summary", selector_payload)

    def install(self, package, costs: dict | None = None):
        return self._call("install", package, costs)

    def adapt(self):
        return self._call("adapt")

    def evaluate(self):
        return self._call("evaluate")

    def shrink(self, changes=None):
        return self._call("shrink", changes)

    def snapshot_model(self):
        return self._call("snapshot_model")

    def echo_size(self, data: bytes) -> int:
        return self._call("echo_size", data)

    def ping(self) -> bool:
        """Whether the gateway answers (a cheap call)."""
        return self.echo_size(b"") == 0


__all__ = ["DeviceUnreachable", "RemoteDevice", "RemoteDeviceError"]
