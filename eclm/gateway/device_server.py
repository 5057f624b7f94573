"""The device side of the gateway: a device's own service behind an HTTP endpoint.

A device that is not trusted with a place in the Ray cluster runs its :class:`EdgeService` (the
same code a device actor runs) in its own process and serves the device protocol over HTTP with
:class:`DeviceGateway`: ``POST /v1/<method>`` with a call frame, answered with a reply frame
(:mod:`eclm.gateway.wire`), or with status 4xx/5xx and ``{"error_type", "message"}`` when the call
is refused or fails. Inside the cluster a :class:`~eclm.gateway.remote_device.RemoteDevice` (the
device's edge actor) calls it. Start one with ``eclm device-gateway`` (docs/security.md).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from eclm.gateway.wire import CALLS, MAX_FRAME_BYTES, MalformedFrameError, decode_call, encode_frame


class DeviceGateway:
    """Serve ``service``'s device-protocol methods over HTTP (one call at a time, as an actor would).

    Args:
        service: The device's service (an :class:`~eclm.pipelines.edge_service.EdgeService`).
        host: Address to bind (``127.0.0.1`` by default; a real deployment puts TLS in front).
        port: Port to bind (0: a free one; see :attr:`url`).
        max_bytes: Largest request accepted.
    """

    def __init__(self, service: Any, host: str = "127.0.0.1", port: int = 0, max_bytes: int = MAX_FRAME_BYTES) -> None:
        self.service, self.max_bytes = service, max_bytes
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), _handler(self))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> DeviceGateway:
        """Serve in a background thread (returns ``self``)."""
        self._thread = threading.Thread(target=self._server.serve_forever, name="eclm-device-gateway", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until :meth:`close` (or Ctrl-C)."""
        self._server.serve_forever()

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def call(self, method: str, body: bytes) -> tuple[int, bytes, str]:
        """``(status, body, content type)`` of one request to ``/v1/<method>``."""
        if method not in CALLS:
            return _error(404, "UnknownMethod", f"{method!r} is not a gateway call")
        try:
            args = decode_call(method, body, max_bytes=self.max_bytes)
        except (MalformedFrameError, ValueError) as err:
            return _error(400, type(err).__name__, str(err))
        try:
            with self._lock:  # the service is not thread-safe; calls run one at a time
                value = getattr(self.service, method)(*args)
            return 200, encode_frame(value), "application/octet-stream"
        except Exception as err:  # noqa: BLE001 - the caller gets the failure, the server goes on
            return _error(500, type(err).__name__, str(err).splitlines()[0] if str(err) else "")


def _error(status: int, error_type: str, message: str) -> tuple[int, bytes, str]:
    return status, json.dumps({"error_type": error_type, "message": message[:2000]}).encode(), "application/json"


def _handler(gateway: DeviceGateway) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            prefix = "/v1/"
            length = int(self.headers.get("Content-Length") or 0)
            if not self.path.startswith(prefix):
                status, body, kind = _error(404, "NotFound", self.path)
            elif length > gateway.max_bytes:
                status, body, kind = _error(413, "TooLarge", f"{length} bytes > {gateway.max_bytes}")
            else:
                status, body, kind = gateway.call(self.path[len(prefix):], self.rfile.read(length))
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet by default
            pass

    return Handler


__all__ = ["DeviceGateway"]
