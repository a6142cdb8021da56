"""grpc.health.v1 status: SERVING only while every model has a warm replica."""

from __future__ import annotations

import asyncio

from grpc_health.v1 import _async as health_async
from grpc_health.v1 import health_pb2

from bertserve.server.models import ModelRegistry

SERVICE_NAME = "bertserve.v1.BertService"


class HealthReporter:
    """Keeps the overall ("") and BertService statuses in line with the replicas."""

    def __init__(self) -> None:
        self.servicer = health_async.HealthServicer()
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
        self._shutting_down = True
        await self.update()

    def schedule_update(self) -> None:
        """Sync entry point for pool callbacks."""
        task = asyncio.get_running_loop().create_task(self.update())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
