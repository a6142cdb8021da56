"""Keep-warm (opt-in, `--keep-warm-ms`): while a lone request waits on a replica, the front end
calls its own gRPC health service every `keep_warm_ms`, so that its gRPC threads and the code on
the reply path are still warm when the replica answers.

Why: a do-nothing gRPC round trip costs more after an idle gap as long as a forward pass than
back to back, most of it inside gRPC's own threads rather than the wake-up of one process
(bench/tools/grpc_floor.py measures it). Pinging cut the front end's time around the replica's
compute on one host, but end-to-end single-client latency did not show it, and on another it
slowed the replica, so it is off by default (the figures: docs/benchmarks.md, "Optimisations").

Cost and scope: one loopback health check (a full in-process gRPC round trip) per `keep_warm_ms`,
only while between 1 and `max_inflight` requests are admitted (server/scheduling/admission.py):
an idle server does not wake up for it, and a loaded one is warm anyway and needs its CPU for the
replicas. The loop sleeps on an event while nothing is in flight; a model's admission wakes it
when its first request arrives. Only for a plaintext port: a TLS port would need client
credentials the server does not have (with mutual TLS).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bertserve.server.logs import get_logger

_log = get_logger(component="keep_warm")
PING_TIMEOUT_S = 1.0


def loopback_target(host: str, port: int) -> str:
    """The address this process reaches its own gRPC port at."""
    if host in ("", "0.0.0.0", "localhost"):
        return f"127.0.0.1:{port}"
    if host in ("::", "[::]"):
        return f"[::1]:{port}"
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


class KeepWarm:
    """Pings `target`'s health service every `interval_s` while `1 <= inflight() <= max_inflight`.
    `wake()` (a model's first admitted request) starts the pings; they stop by themselves when
    nothing is in flight."""

    def __init__(
        self,
        target: str,
        inflight: Callable[[], int],
        interval_s: float,
        max_inflight: int = 1,
        on_ping: Callable[[], None] | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("keep-warm interval must be positive")
        self._target = target
        self._inflight = inflight
        self._interval_s = interval_s
        self._max_inflight = max_inflight
        self._on_ping = on_ping
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.pings = 0  # sent, for tests and the log line at stop

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="keep-warm")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        _log.info("keep_warm_stopped", pings=self.pings)

    async def _run(self) -> None:
        async with grpc.aio.insecure_channel(self._target) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            request = health_pb2.HealthCheckRequest(service="")
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._inflight() > 0:
                    await asyncio.sleep(self._interval_s)
                    if 1 <= self._inflight() <= self._max_inflight:
                        self.pings += 1
                        if self._on_ping is not None:
                            self._on_ping()
                        # A ping that fails (the server is stopping) only means a colder reply.
                        with contextlib.suppress(grpc.RpcError):
                            await check(request, timeout=PING_TIMEOUT_S)
