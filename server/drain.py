"""Shutting the gRPC port down without losing a call.

grpc.aio's own graceful stop (`Server.stop(grace)`) loses calls. It starts gRPC core's shutdown,
which
- cancels every call the core has received but the server has not yet read: the event loop reads
  one call per method and turn, so under load calls wait in gRPC core before the server reads
  them (up to ~160 ms of them were cancelled), and
- cancels every call that reaches the core after the shutdown began and before the client has
  processed the GOAWAY frame (a closed-loop client sends its next call as soon as an answer
  arrives).
Both end CANCELLED at the client, which a client does not retry.

So the drain has two phases:

1. On SIGTERM the gRPC server keeps running. Health turns NOT_SERVING (Watch streams get it and
   end). The calls gRPC core had received before the signal and the server had not read yet
   (counted with channelz: `core_calls.py`) are served as they are read, like the calls read
   before. Every other call read from now on, except health checks, is *held*: not served, not
   answered. Streams stop reading new requests (servicer.py). The drain waits until none of the
   served calls runs any more and no new call has been read for `QUIET_S`, or until the grace
   period (less a reserve) has passed.
2. Then gRPC core's shutdown starts: the port closes and each connection gets GOAWAY, so a
   client's next call goes to a new connection, which is refused: UNAVAILABLE. Only then are
   the held calls answered UNAVAILABLE ("the server is shutting down"), retryable: a client
   retries them on another server. What still runs at the end of the grace period is cancelled.

A closed-loop client is always either waiting for an answer or holding a call at the server
when phase 2 starts, so no call of it reaches the core during the shutdown. Tested in
tests/integration/test_drain.py; scripts/sigterm_under_load.py repeats it under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio

from bertserve.server.interceptors import (
    Continuation,
    Handler,
    around,
    map_behaviours,
    refusal_handler,
    service_of,
)

# Health checks are answered while draining: they say NOT_SERVING, and a Watch ends after it.
EXEMPT_SERVICES = frozenset({"grpc.health.v1.Health"})
# How long no call may have been read before the port closes (phase 2). Closed-loop clients send
# their next call within a round trip of an answer; this is many round trips on any network.
QUIET_S = 0.05
# Of the grace period, kept for phase 2: the held calls' answers and gRPC's own stop.
PHASE2_RESERVE_S = 0.25
SHUTTING_DOWN = "the server is shutting down; send the call again (to another server)"


class Drain:
    """The two-phase drain's state (see the module docstring). `clock` is injectable for tests."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, on_hold: Callable[[], None] | None = None
    ) -> None:
        self._clock = clock
        self._on_hold = on_hold
        self.draining = False
        self.active = 0  # calls read before the drain began and still running (health checks too)
        self.held = 0  # calls read while draining, waiting for phase 2
        self.backlog = 0  # calls received before the signal and not yet read: served
        self.received_unread = 0  # the backlog at the signal
        self.reads = 0  # calls read, in all
        self._mark: tuple[int, int] | None = None  # (backlog, reads) at the signal
        self.refused = 0  # calls held and answered UNAVAILABLE, in all
        self._last_read = clock()
        self._changed = asyncio.Event()
        self._released = asyncio.Event()
        self.began = asyncio.Event()  # set when the drain begins; streams stop reading then

    def mark_signal(self, calls_in_core: int | None) -> None:
        """Note, at the signal, how many calls gRPC core holds (None: unknown). Safe in a signal
        handler (it touches no asyncio object); `begin()` follows on the event loop."""
        if self._mark is None:
            unread = 0 if calls_in_core is None else calls_in_core - self.active - self.held
            self._mark = (max(0, unread), self.reads)

    def begin(self) -> None:
        """Phase 1: the calls received before `mark_signal` and not read yet are served as they
        are read; every other call read from now on is held."""
        if self.draining:
            return
        self.mark_signal(None)
        assert self._mark is not None
        unread, reads_then = self._mark
        self.received_unread = unread
        # Calls read between the signal and now were served already (not yet draining).
        self.backlog = max(0, unread - (self.reads - reads_then))
        self.draining = True
        self.began.set()
        self._changed.set()

    def release(self) -> None:
        """Answer every held call (phase 2)."""
        self._released.set()

    def call_read(self, counts_for_quiet: bool = True) -> bool:
        """A call was read; True when it is to be held (read while draining, not a backlog call)."""
        self.reads += 1
        if counts_for_quiet:
            self._last_read = self._clock()
        self._changed.set()
        if not self.draining:
            return False
        if self.backlog > 0:
            self.backlog -= 1
            return False
        return counts_for_quiet

    def call_started(self) -> None:
        self.active += 1

    def call_ended(self) -> None:
        self.active -= 1
        self._changed.set()

    async def hold(self) -> None:
        """Wait, as a call read while draining, until the held calls are released."""
        self.held += 1
        if self._on_hold is not None:
            self._on_hold()
        try:
            await self._released.wait()
        finally:
            self.held -= 1
            self.refused += 1

    def settled(self) -> float:
        """0 when phase 2 may start; otherwise how long to wait at most before asking again."""
        if self.active:
            return float("inf")
        return max(0.0, self._last_read + QUIET_S - self._clock())

    async def settle(self, deadline: float) -> bool:
        """Wait until `settled()`, or `deadline` (a clock time). True when settled."""
        while True:
            wait = self.settled()
            if wait <= 0:
                return True
            left = deadline - self._clock()
            if left <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(wait, left))


class DrainInterceptor(grpc.aio.ServerInterceptor):
    """Counts the calls being served and, once the drain began, holds new ones (not health)."""

    def __init__(self, drain: Drain) -> None:
        self._drain = drain

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        drain = self._drain
        exempt = service_of(handler_call_details.method) in EXEMPT_SERVICES
        if drain.call_read(counts_for_quiet=not exempt):
            return refusal_handler(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN, wait=drain.hold)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None

        def counted(behaviour: Callable[..., Any], _request_streaming: bool) -> Any:
            return around(behaviour, drain.call_started, drain.call_ended)

        return map_behaviours(handler, counted)


async def stop_server(
    server: grpc.aio.Server, drain: Drain, grace_s: float, clock: Callable[[], float]
) -> bool:
    """Phases 1 and 2 on a running server; True when every call read before the drain finished
    within the grace period."""
    deadline = clock() + grace_s
    reserve = min(PHASE2_RESERVE_S, grace_s / 4)
    settled = await drain.settle(deadline - reserve)
    stopping = asyncio.get_running_loop().create_task(server.stop(max(reserve, deadline - clock())))
    # The stop task's first step starts gRPC core's shutdown (port closed, GOAWAY sent) before
    # it first waits; the held calls are answered only after that.
    await asyncio.sleep(0)
    drain.release()
    await stopping
    return settled
