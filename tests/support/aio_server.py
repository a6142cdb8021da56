"""A grpc.aio server on a free loopback port, for unit tests that need a real peer."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import grpc


@contextlib.asynccontextmanager
async def local_aio_server(register: Callable[[grpc.aio.Server], None]) -> AsyncIterator[str]:
    """Start a server with the servicers `register` adds; yield its address; stop it after."""
    server = grpc.aio.server()
    register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
