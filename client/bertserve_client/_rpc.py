"""How the clients invoke RPCs: deadlines, metadata, retries, error mapping and stream plumbing.

Every call of both clients goes through this module, so call policies (such as retries) belong here.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Generator,
    Iterable,
    Iterator,
)
from dataclasses import dataclass, field
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


# Unary calls answered with these codes are retried (the server sheds load, or no replica can
# take the work for now); the server's retry hint is gRPC's standard trailer.
RETRYABLE_CODES = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE})
PUSHBACK_KEY = "grpc-retry-pushback-ms"
RETRY_ATTEMPT_KEY = "x-retry-attempt"
_NO_RETRY = -1


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded, jittered retries of unary calls (streams are never retried).

    A call answered RESOURCE_EXHAUSTED (except gRPC's own "message larger than max") or UNAVAILABLE
    is tried again, at most ``retries`` more times. The wait before a retry:

    - When the answer has the server's ``grpc-retry-pushback-ms`` trailer (``p`` seconds):
      decorrelated jitter with the pushback as its floor, uniform in
      [p, pushback_spread x max(p, w)], where ``w`` is the wait before the attempt just answered
      (none before the first retry: uniform in [p, 4p] with the default spread); at most
      max(max_backoff_s, p). The client never comes back sooner than the server asked (gRPC's
      retry design, A6, "Pushback"), and callers rejected together spread out over a window that
      widens with every retry instead of all coming back after the same pushback ("Exponential
      Backoff And Jitter", AWS Architecture Blog: decorrelated jitter, there with a factor of 3;
      4 here, as measured in docs/reliability.md, "Overload and admission").
    - Without the trailer: exponential backoff with full jitter, uniform in
      [0, min(max_backoff_s, initial_backoff_s x 2**n)] before retry n+1.

    A negative or non-numeric pushback means "do not retry" (gRPC's rule). No retry starts when its
    wait (as drawn) would pass the call's deadline; every attempt gets the time left of that one
    deadline. ``rand`` (uniform in [0, 1)) and ``clock`` (monotonic seconds) are injected so that
    tests decide the draws and the time.
    """

    retries: int = 3
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    pushback_spread: float = 4.0
    rand: Callable[[], float] = field(default=random.random, repr=False, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be an integer >= 0 (0: no retries), got {self.retries!r}")
        if not self.pushback_spread >= 1.0:
            raise ValueError(f"pushback_spread must be >= 1, got {self.pushback_spread!r}")

    def delay(self, error: grpc.RpcError, attempt: int, previous: float | None = None) -> float | None:
        """Seconds to wait before retrying after ``error`` on attempt ``attempt`` (0: the first
        call), whose own wait was ``previous`` seconds (None: it was the first call), or None: do
        not retry."""
        if attempt >= self.retries or _code(error) not in RETRYABLE_CODES or _too_large(error):
            return None
        pushback = pushback_ms(error)
        if pushback == _NO_RETRY:
            return None
        if pushback is not None:
            floor = pushback / 1000.0
            top = min(max(self.max_backoff_s, floor), self.pushback_spread * max(floor, previous or 0.0))
            return floor + max(0.0, top - floor) * self.rand()
        return min(self.max_backoff_s, self.initial_backoff_s * 2.0**attempt) * self.rand()


def _code(error: grpc.RpcError) -> grpc.StatusCode | None:
    code = getattr(error, "code", None)
    return code() if callable(code) else None


def _too_large(error: grpc.RpcError) -> bool:
    """gRPC's own RESOURCE_EXHAUSTED for a message over a size limit: the same request fails again."""
    details = getattr(error, "details", None)
    text = details() if callable(details) else None
    return isinstance(text, str) and "message larger than max" in text


def pushback_ms(error: grpc.RpcError) -> int | None:
    """The ``grpc-retry-pushback-ms`` trailer of a failed call: None when absent, -1 when negative
    or not an integer (the server asks not to retry)."""
    trailing = getattr(error, "trailing_metadata", None)
    for key, value in (trailing() if callable(trailing) else None) or ():
        if key != PUSHBACK_KEY:
            continue
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
        try:
            ms = int(text.strip())
        except ValueError:
            return _NO_RETRY
        return ms if ms >= 0 else _NO_RETRY
    return None


@dataclass(frozen=True)
class CallSettings:
    """Per-client call defaults."""

    timeout: float | None
    metadata: tuple[tuple[str, str], ...]
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def deadline(self, timeout: float | None) -> float | None:
        """The per-call ``timeout`` when given, else the client's default (None: no deadline)."""
        return self.timeout if timeout is None else timeout

    @property
    def grpc_metadata(self) -> tuple[tuple[str, str], ...] | None:
        return self.metadata or None


class _Attempts:
    """The attempts of one unary call under one deadline (``timeout`` seconds from now)."""

    def __init__(self, policy: RetryPolicy, timeout: float | None) -> None:
        self._policy = policy
        self._timeout = timeout
        self._end = None if timeout is None else policy.clock() + timeout
        self._previous: float | None = None  # the wait before the current attempt
        self.attempt = 0

    def timeout(self) -> float | None:
        """The timeout of the next attempt: what is left of the call's deadline."""
        if self._end is None or self.attempt == 0:
            return self._timeout
        return max(0.0, self._end - self._policy.clock())

    def metadata(self, settings: CallSettings) -> tuple[tuple[str, str], ...] | None:
        """The call's metadata; a retry also says how many attempts came before it
        (`x-retry-attempt`), so that the server's admission can favour it."""
        if self.attempt == 0:
            return settings.grpc_metadata
        return (*settings.metadata, (RETRY_ATTEMPT_KEY, str(self.attempt)))

    def wait(self, error: grpc.RpcError) -> float | None:
        """Seconds to sleep before the next attempt, or None: raise ``error``."""
        delay = self._policy.delay(error, self.attempt, self._previous)
        if delay is None or (self._end is not None and self._policy.clock() + delay >= self._end):
            return None
        self.attempt += 1
        self._previous = delay
        return delay


def call_unary(
    method: grpc.UnaryUnaryMultiCallable[Req, Resp],
    request: Req,
    settings: CallSettings,
    timeout: float | None,
) -> Resp:
    """Invoke a unary RPC, retried per ``settings.retry``; a non-OK status raises BertServeError."""
    attempts = _Attempts(settings.retry, settings.deadline(timeout))
    while True:
        try:
            return method(request, timeout=attempts.timeout(), metadata=attempts.metadata(settings))
        except grpc.RpcError as error:
            delay = attempts.wait(error)
            if delay is None:
                raise BertServeError.from_rpc_error(error) from error
        time.sleep(delay)


async def call_unary_async(
    method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
    request: Req,
    settings: CallSettings,
    timeout: float | None,
) -> Resp:
    """Invoke a unary RPC on an asyncio channel, retried per ``settings.retry``; a non-OK status
    raises BertServeError."""
    attempts = _Attempts(settings.retry, settings.deadline(timeout))
    while True:
        try:
            return await method(request, timeout=attempts.timeout(), metadata=attempts.metadata(settings))
        except grpc.RpcError as error:
            delay = attempts.wait(error)
            if delay is None:
                raise BertServeError.from_rpc_error(error) from error
        await asyncio.sleep(delay)


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
