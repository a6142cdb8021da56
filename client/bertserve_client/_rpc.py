"""How the clients invoke RPCs: deadlines, metadata, error mapping and stream plumbing.

Every call of both clients goes through this module, so call policies (such as retries) belong here.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Generator,
    Iterable,
    Iterator,
)
from dataclasses import dataclass
from typing import TypeVar

import grpc
import grpc.aio

from bertserve_client._messages import Converter
from bertserve_client.errors import BertServeError
from bertserve_client.streaming import StreamResult

In = TypeVar("In")
Req = TypeVar("Req")
Resp = TypeVar("Resp")
R = TypeVar("R")


@dataclass(frozen=True)
class CallSettings:
    """Per-client call defaults."""

    timeout: float | None
    metadata: tuple[tuple[str, str], ...]

    def deadline(self, timeout: float | None) -> float | None:
        """The per-call ``timeout`` when given, else the client's default (None: no deadline)."""
        return self.timeout if timeout is None else timeout

    @property
    def grpc_metadata(self) -> tuple[tuple[str, str], ...] | None:
        return self.metadata or None


def call_unary(
    method: grpc.UnaryUnaryMultiCallable[Req, Resp],
    request: Req,
    settings: CallSettings,
    timeout: float | None,
) -> Resp:
    """Invoke a unary RPC; a non-OK status raises BertServeError."""
    try:
        return method(request, timeout=settings.deadline(timeout), metadata=settings.grpc_metadata)
    except grpc.RpcError as error:
        raise BertServeError.from_rpc_error(error) from error


async def call_unary_async(
    method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
    request: Req,
    settings: CallSettings,
    timeout: float | None,
) -> Resp:
    """Invoke a unary RPC on an asyncio channel; a non-OK status raises BertServeError."""
    try:
        return await method(request, timeout=settings.deadline(timeout), metadata=settings.grpc_metadata)
    except grpc.RpcError as error:
        raise BertServeError.from_rpc_error(error) from error


def call_stream(
    method: grpc.StreamStreamMultiCallable[Req, Resp],
    inputs: Iterable[In],
    convert: Converter[In, Req],
    to_result: Callable[[Resp], StreamResult[R]],
    settings: CallSettings,
    timeout: float | None,
) -> Generator[StreamResult[R], None, None]:
    """Send converted ``inputs`` over one bidirectional stream and yield results as they arrive.

    ``timeout`` is a deadline for the whole stream. An exception raised while reading or converting
    the inputs cancels the stream and is re-raised here; a non-OK stream status raises BertServeError.
    Closing the returned generator early (``close()``) cancels the stream.
    """
    guard = _InputGuard()
    call = method(
        _requests(inputs, convert, guard), timeout=settings.deadline(timeout), metadata=settings.grpc_metadata
    )
    guard.attach(call.cancel)
    failure: grpc.RpcError | None = None
    try:
        for response in call:
            yield to_result(response)
    except grpc.RpcError as error:
        failure = error
    finally:
        call.cancel()
    guard.reraise()
    if failure is not None:
        raise BertServeError.from_rpc_error(failure) from failure


async def call_stream_async(
    method: grpc.aio.StreamStreamMultiCallable[Req, Resp],
    inputs: Iterable[In] | AsyncIterable[In],
    convert: Converter[In, Req],
    to_result: Callable[[Resp], StreamResult[R]],
    settings: CallSettings,
    timeout: float | None,
) -> AsyncGenerator[StreamResult[R], None]:
    """The asyncio form of :func:`call_stream`; ``inputs`` may be an iterable or an async iterable."""
    guard = _InputGuard()
    call = method(
        _requests_async(inputs, convert, guard),
        timeout=settings.deadline(timeout),
        metadata=settings.grpc_metadata,
    )
    guard.attach(call.cancel)
    failure: grpc.RpcError | None = None
    try:
        async for response in call:
            yield to_result(response)
    except grpc.RpcError as error:
        failure = error
    except asyncio.CancelledError:
        # grpc.aio reports a locally cancelled call as CancelledError; ours (after an input error)
        # becomes that error below, anything else is a real cancellation.
        if guard.error is None:
            raise
    finally:
        call.cancel()
    guard.reraise()
    if failure is not None:
        raise BertServeError.from_rpc_error(failure) from failure


class _InputGuard:
    """Keeps an exception raised while producing stream requests, and cancels the call it belongs to."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancel: Callable[[], object] | None = None
        self.error: Exception | None = None

    def attach(self, cancel: Callable[[], object]) -> None:
        """Register the call's cancel(); runs it at once if an input already failed."""
        with self._lock:
            self._cancel = cancel
            failed = self.error is not None
        if failed:
            cancel()

    def fail(self, error: Exception) -> None:
        with self._lock:
            if self.error is None:
                self.error = error
            cancel = self._cancel
        if cancel is not None:
            cancel()

    def reraise(self) -> None:
        if self.error is not None:
            raise self.error


def _requests(inputs: Iterable[In], convert: Converter[In, Req], guard: _InputGuard) -> Iterator[Req]:
    """Lazily convert inputs; a failure goes to ``guard`` and ends the request stream."""
    index = 0
    try:
        iterator = iter(inputs)
    except Exception as error:
        guard.fail(error)
        return
    while True:
        try:
            request = convert(index, next(iterator))
        except StopIteration:
            return
        except Exception as error:
            guard.fail(error)
            return
        yield request
        index += 1


async def _requests_async(
    inputs: Iterable[In] | AsyncIterable[In], convert: Converter[In, Req], guard: _InputGuard
) -> AsyncIterator[Req]:
    """The asyncio form of :func:`_requests`; a sync iterable is read on the event loop."""
    if not isinstance(inputs, AsyncIterable):
        for request in _requests(inputs, convert, guard):
            yield request
        return
    index = 0
    try:
        iterator = aiter(inputs)
    except Exception as error:
        guard.fail(error)
        return
    while True:
        try:
            request = convert(index, await anext(iterator))
        except StopAsyncIteration:
            return
        except Exception as error:
            guard.fail(error)
            return
        yield request
        index += 1
