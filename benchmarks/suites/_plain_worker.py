"""A device outside Ray: the same ``EdgeService`` in a plain spawned process, driven over a pipe.

It is the reference an ``EdgeActor`` is compared against: same class, same data stream, same
sub-model and the same torch thread count, but no Ray worker runtime around it. Commands are the
service's own methods with its typed messages (pickled over the pipe). It also counts the
samples its training loop processes (a forward pre-hook on the model in training mode), which
``EdgeService.adapt``'s metrics do not report but the achieved FLOP/s needs.
"""

from __future__ import annotations

import multiprocessing
import time
from multiprocessing.connection import Connection
from typing import Any

from eclm.config import PlatformConfig


def _serve(conn: Connection, config: PlatformConfig, device_index: int, threads: int) -> None:
    import torch

    from eclm.pipelines.edge_service import EdgeService
    from eclm.pipelines.profiler import measure_gflops

    service = EdgeService(config, device_index, threads)
    trained = [0]

    def count(module: torch.nn.Module, args: tuple) -> None:
        if module.training:
            trained[0] += int(args[0].shape[0])

    while True:
        command, args = conn.recv()
        try:
            if command == "stop":
                conn.send(("ok", None))
                return
            if command == "advance":
                out = service.advance(*args)
            elif command == "install":
                out = service.install(*args)
                service.model.register_forward_pre_hook(count)
            elif command == "adapt":
                trained[0] = 0
                t0 = time.perf_counter()
                m = service.adapt().metrics
                out = {"wall_seconds": time.perf_counter() - t0, "samples": trained[0], "train_seconds": m.train_seconds,
                       "batches": m.batches, "seconds_per_batch": m.seconds_per_batch}
            elif command == "gflops":
                out = measure_gflops(*args)
            elif command == "threads":
                out = torch.get_num_threads()
            else:
                raise ValueError(f"unknown command {command!r}")
            conn.send(("ok", out))
        except Exception as err:  # noqa: BLE001 - sent back and raised in the driver
            conn.send(("error", f"{type(err).__name__}: {err}"))


class PlainDevice:
    """Handle to a spawned process hosting one ``EdgeService``.

    Args:
        config: The platform config.
        device_index: Device index in the config.
        threads: torch threads of the process.
        timeout_s: Seconds to wait for any one reply.
    """

    def __init__(self, config: PlatformConfig, device_index: int, threads: int, timeout_s: float = 600.0) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, config, device_index, threads),
                                 daemon=True, name=f"plain-device-{device_index}")
        self._proc.start()
        child.close()
        self.timeout_s = timeout_s

    def call(self, command: str, *args: Any) -> Any:
        """Run ``command`` in the worker and return its result.

        Raises:
            TimeoutError: If the worker does not answer within ``timeout_s``.
            RuntimeError: If the command failed in the worker.
        """
        self._conn.send((command, args))
        if not self._conn.poll(self.timeout_s):
            raise TimeoutError(f"plain device did not answer {command!r} within {self.timeout_s:.0f} s")
        status, value = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"plain device failed on {command!r}: {value}")
        return value

    def close(self) -> None:
        """Stop the worker (terminating it if it does not exit)."""
        try:
            if self._proc.is_alive():
                self.call("stop")
        except (OSError, EOFError, TimeoutError, RuntimeError):
            pass
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.terminate()
        self._conn.close()

    def __enter__(self) -> PlainDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
