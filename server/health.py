"""grpc.health.v1 status: SERVING only while every model has a warm replica."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bertserve.server.models import ModelRegistry

SERVICE_NAME = "bertserve.v1.BertService"


class DrainingHealthServicer(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """grpc.health.v1 Check, List and Watch, as grpc_health's asyncio servicer, plus `drain()`: on
    shutdown every status turns NOT_SERVING for good, and each Watch stream, once it has sent
    NOT_SERVING, ends (OK). The gRPC server's graceful stop waits for every open call, and a Watch
    never ends by itself: one open Watch (a load balancer's) would hold every SIGTERM for the
    whole grace period even with no request in flight."""

    def __init__(self) -> None:
        self._status: dict[str, int] = {"": health_pb2.HealthCheckResponse.SERVING}
        self._changed = asyncio.Condition()
        self._draining = False

    async def set(self, service: str, status: int) -> None:
        """Set a service's status (ignored once draining)."""
        async with self._changed:
            if not self._draining:
                self._status[service] = status
                self._changed.notify_all()

    async def drain(self) -> None:
        async with self._changed:
            self._draining = True
            for service in self._status:
                self._status[service] = health_pb2.HealthCheckResponse.NOT_SERVING
            self._changed.notify_all()

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return health_pb2.HealthCheckResponse(status=status)

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthListResponse:
        """Every service's status ("" is the whole server)."""
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status) for name, status in self._status.items()
            }
        )

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        unknown = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        last: int | None = None
        while True:
            async with self._changed:
                while (status := self._status.get(request.service, unknown)) == last and not self._draining:
                    await self._changed.wait()
                draining = self._draining
            if status != last:  # written outside the lock: a slow watcher holds up no one
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            if draining:
                return


class HealthReporter:
    """Keeps the overall ("") and BertService statuses in line with the replicas."""

    def __init__(self) -> None:
        self.servicer = DrainingHealthServicer()
        self._registry: ModelRegistry | None = None
        self._shutting_down = False
        self._lock = asyncio.Lock()
        self._pending: set[asyncio.Task[None]] = set()

    def attach(self, registry: ModelRegistry) -> None:
        self._registry = registry

    def status(self) -> int:
        if self._shutting_down or self._registry is None or not self._registry.all_serving():
            return int(health_pb2.HealthCheckResponse.NOT_SERVING)
        return int(health_pb2.HealthCheckResponse.SERVING)

    async def update(self) -> None:
        async with self._lock:
            status = self.status()
            for name in ("", SERVICE_NAME):
                await self.servicer.set(name, status)

    async def shutting_down(self) -> None:
        """NOT_SERVING for good; open Watch streams get it and end."""
        self._shutting_down = True
        await self.update()
        await self.servicer.drain()

    def schedule_update(self) -> None:
        """Sync entry point for pool callbacks."""
        task = asyncio.get_running_loop().create_task(self.update())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
