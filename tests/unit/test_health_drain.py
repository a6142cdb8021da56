"""grpc.health.v1 on shutdown: every Watch stream gets NOT_SERVING and then ends, so an open
Watch (a load balancer's) does not hold the server's graceful stop for the whole grace period."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bertserve.server.health import SERVICE_NAME, DrainingHealthServicer

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


async def _serve(servicer: DrainingHealthServicer) -> tuple[grpc.aio.Server, grpc.aio.Channel]:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, grpc.aio.insecure_channel(f"127.0.0.1:{port}")


def test_watch_sees_changes_then_not_serving_and_ends_on_drain() -> None:
    async def main() -> tuple[list[int], grpc.StatusCode, float]:
        health = DrainingHealthServicer()
        await health.set(SERVICE_NAME, NOT_SERVING)
        server, channel = await _serve(health)
        try:
            stub = health_pb2_grpc.HealthStub(channel)
            call = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=10)
            seen = [(await call.read()).status]
            await health.set(SERVICE_NAME, SERVING)
            seen.append((await call.read()).status)
            await health.drain()
            seen.append((await call.read()).status)
            assert await call.read() is grpc.aio.EOF
            # The graceful stop has no call left to wait for: it returns at once.
            start = asyncio.get_running_loop().time()
            await server.stop(10)
            return seen, await call.code(), asyncio.get_running_loop().time() - start
        finally:
            await channel.close()
            await server.stop(None)

    seen, code, stop_s = run(main())
    assert seen == [NOT_SERVING, SERVING, NOT_SERVING]
    assert code == grpc.StatusCode.OK
    assert stop_s < 1.0


def test_watch_of_an_unknown_service_also_ends_on_drain() -> None:
    async def main() -> tuple[list[int], grpc.StatusCode]:
        health = DrainingHealthServicer()
        server, channel = await _serve(health)
        try:
            call = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="nope"), timeout=10
            )
            seen = [(await call.read()).status]
            await health.drain()
            assert await call.read() is grpc.aio.EOF
            return seen, await call.code()
        finally:
            await channel.close()
            await server.stop(None)

    assert run(main()) == ([UNKNOWN], grpc.StatusCode.OK)


def test_check_answers_known_services_and_statuses_freeze_on_drain() -> None:
    async def main() -> tuple[int, int, grpc.StatusCode]:
        health = DrainingHealthServicer()
        server, channel = await _serve(health)
        try:
            stub = health_pb2_grpc.HealthStub(channel)
            before = (await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)).status
            await health.drain()
            await health.set("", SERVING)  # a late replica change: ignored while shutting down
            after = (await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)).status
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
            return before, after, info.value.code()
        finally:
            await channel.close()
            await server.stop(None)

    assert run(main()) == (SERVING, NOT_SERVING, grpc.StatusCode.NOT_FOUND)
