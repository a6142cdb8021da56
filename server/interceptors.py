"""Server interceptors that apply to every service the server registers, and the handler
plumbing they share.

- `ParseGuard`: a request whose bytes do not parse gets INVALID_ARGUMENT on every service. gRPC
  would answer UNKNOWN with the parser's exception ("Unexpected DecodeError: Error parsing
  message") for the library servicers (health, reflection) and AdminService. BertService parses
  tolerantly itself (servicer.add_to_server), so that a stream can answer the requests read
  before a malformed one.
- `refusal_handler`: fails a call without parsing it, for any call shape (bearer-token
  rejection, drain).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
import grpc.aio

# grpc's handler classes are generic in its type stubs only.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]"


@dataclass(frozen=True)
class Unparsed:
    """Stands for a request message that did not parse (ParseGuard's deserializers return it)."""

    method: str

    @property
    def message(self) -> str:
        return f"the request is not a valid message for {self.method}"


def service_of(method: str) -> str:
    """`/package.Service/Method` → `package.Service`."""
    return method.lstrip("/").split("/", 1)[0]


def around(behaviour: Callable[..., Any], enter: Callable[[], None], leave: Callable[[], None]) -> Any:
    """`behaviour` with `enter()` before it and `leave()` after it ends, however it ends. Keeps
    its kind: grpc.aio tells an async-generator handler from a coroutine one."""
    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            enter()
            try:
                async for item in behaviour(request, context):
                    yield item
            finally:
                leave()

        return stream

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        enter()
        try:
            return await behaviour(request, context)
        finally:
            leave()

    return call


def map_behaviours(handler: Handler, wrap: Callable[[Callable[..., Any], bool], Any]) -> Handler:
    """The handler with its behaviour replaced by `wrap(behaviour, request_streaming)`."""
    name = (
        ("stream_stream" if handler.response_streaming else "stream_unary")
        if handler.request_streaming
        else ("unary_stream" if handler.response_streaming else "unary_unary")
    )
    behaviour = getattr(handler, name)
    replace = getattr(handler, "_replace", None)
    if behaviour is None or replace is None:  # not grpc's own namedtuple: leave it alone
        return handler
    return replace(**{name: wrap(behaviour, bool(handler.request_streaming))})  # type: ignore[no-any-return]


# ---- malformed requests -------------------------------------------------------------------------


def _tolerant(deserializer: Callable[[bytes], Any] | None, method: str) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # DecodeError: corrupt wire format, bad UTF-8, nesting too deep, ...
            return Unparsed(method)

    return parse


async def _checked(
    requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, Unparsed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        yield request


def _rejecting_unparsed(behaviour: Callable[..., Any], request_streaming: bool) -> Any:
    if request_streaming:
        if inspect.isasyncgenfunction(behaviour):

            async def stream(
                requests: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                async for item in behaviour(_checked(requests, context), context):
                    yield item

            return stream

        async def call(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            return await behaviour(_checked(requests, context), context)

        return call

    async def first_checked(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, Unparsed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return request

    if inspect.isasyncgenfunction(behaviour):

        async def unary_stream(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            async for item in behaviour(await first_checked(request, context), context):
                yield item

        return unary_stream

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await behaviour(await first_checked(request, context), context)

    return unary


class ParseGuard(grpc.aio.ServerInterceptor):
    """Unparseable request bytes get INVALID_ARGUMENT, on every registered method."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        replace = getattr(handler, "_replace", None)
        if handler is None or replace is None:
            return handler
        method: str = handler_call_details.method
        tolerant = replace(request_deserializer=_tolerant(handler.request_deserializer, method))
        return map_behaviours(tolerant, _rejecting_unparsed)


# ---- refusing a call --------------------------------------------------------------------------


async def _first(requests: AsyncIterator[Any]) -> None:
    async for _ in requests:
        return


def refusal_handler(
    code: grpc.StatusCode,
    message: str,
    *,
    trailers: Sequence[tuple[str, str]] = (),
    wait: Callable[[], Awaitable[None]] | None = None,
) -> Handler:
    """A handler that fails the call with `code` (after `wait()`, when given). A stream-stream
    handler without deserializers serves any call shape (a unary call is a stream of one message
    on the wire) and never parses the request."""

    async def refuse(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> None:
        # Take the first message off the wire (raw bytes, never parsed) before failing the call: a
        # client still sending its request while the call ends could see INTERNAL instead.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(_first(requests), timeout=0.2)
        if wait is not None:
            await wait()
        await context.abort(code, message, trailing_metadata=tuple(trailers))

    return grpc.stream_stream_rpc_method_handler(refuse)
