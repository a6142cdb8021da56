"""The two-phase drain (server/drain.py) on an in-process grpc.aio server: which calls are served,
held, refused and cancelled; the count of calls received before the signal; the quiet period on
an injected clock."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from typing import Any

import grpc
import pytest

from bertserve.server.core_calls import CoreCalls, server_ids
from bertserve.server.drain import QUIET_S, SHUTTING_DOWN, Drain, DrainInterceptor, stop_server
from bertserve.server.logs import Throttle

METHOD = "/test.Svc/Work"


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---- Drain on its own, with an injected clock ---------------------------------------------------


def test_calls_read_before_the_drain_are_served_later_ones_held() -> None:
    drain = Drain(clock=FakeClock())
    assert drain.call_read() is False
    drain.mark_signal(calls_in_core=None)
    drain.begin()
    assert drain.call_read() is True
    assert drain.call_read(counts_for_quiet=False) is False  # health checks are answered


def test_calls_received_before_the_signal_and_not_yet_read_are_served() -> None:
    drain = Drain(clock=FakeClock())
    drain.call_started()  # one call running
    # gRPC core holds 4 calls at the signal: the running one and 3 not read yet.
    drain.mark_signal(calls_in_core=4)
    drain.call_read()  # read between the signal and begin(): served as usual
    drain.begin()
    assert drain.received_unread == 3
    assert [drain.call_read() for _ in range(4)] == [False, False, True, True]


def test_mark_signal_keeps_the_first_count() -> None:
    drain = Drain(clock=FakeClock())
    drain.mark_signal(calls_in_core=5)
    drain.mark_signal(calls_in_core=50)  # a second signal
    drain.begin()
    assert drain.received_unread == 5


def test_settled_needs_no_call_running_and_a_quiet_period() -> None:
    clock = FakeClock()
    drain = Drain(clock=clock)
    drain.call_started()
    drain.begin()
    assert drain.settled() == float("inf")
    drain.call_ended()
    drain.call_read()  # a call read now (held): the quiet period starts again
    assert drain.settled() == pytest.approx(QUIET_S)
    clock.now += QUIET_S / 2
    assert drain.settled() == pytest.approx(QUIET_S / 2)
    clock.now += QUIET_S
    assert drain.settled() == 0


def test_settle_returns_false_at_the_deadline_while_a_call_runs() -> None:
    async def main() -> bool:
        clock = FakeClock()
        drain = Drain(clock=clock)
        drain.call_started()
        drain.begin()
        return await drain.settle(deadline=clock.now)  # the deadline has come: no waiting

    assert run(main()) is False


# ---- On a real grpc.aio server -------------------------------------------------------------------


async def _server(drain: Drain, release: asyncio.Event) -> tuple[grpc.aio.Server, str]:
    async def work(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await release.wait()
        return b"done:" + request

    server = grpc.aio.server(interceptors=[DrainInterceptor(drain)])
    handler = grpc.unary_unary_rpc_method_handler(work)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Svc", {"Work": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def test_a_call_running_at_the_drain_is_answered_and_a_new_one_is_held_then_refused() -> None:
    async def main() -> tuple[bytes, grpc.StatusCode, str, int, bool]:
        drain = Drain()
        release = asyncio.Event()
        server, address = await _server(drain, release)
        async with grpc.aio.insecure_channel(address) as channel:
            work = channel.unary_unary(METHOD)
            running = asyncio.ensure_future(work(b"a", timeout=20))
            while drain.active < 1:
                await asyncio.sleep(0.01)
            drain.mark_signal(calls_in_core=None)
            drain.begin()
            late = asyncio.ensure_future(work(b"b", timeout=20))
            while drain.held < 1:
                await asyncio.sleep(0.01)
            assert not late.done()  # held: not answered before the port closes
            stopping = asyncio.ensure_future(stop_server(server, drain, 10.0, time.monotonic))
            await asyncio.sleep(0.05)
            release.set()
            answer = await running
            try:
                await late
                code, details = grpc.StatusCode.OK, ""
            except grpc.aio.AioRpcError as exc:
                code, details = exc.code(), exc.details() or ""
            settled = await stopping
        return answer, code, details, drain.refused, settled

    answer, code, details, refused, settled = run(main())
    assert answer == b"done:a"
    assert code == grpc.StatusCode.UNAVAILABLE and details == SHUTTING_DOWN
    assert refused == 1 and settled


def test_calls_received_while_the_event_loop_was_busy_are_served_after_the_signal() -> None:
    """Calls that reach gRPC core while the event loop is blocked are not read yet when the
    signal comes; channelz counts them and the drain serves them (it would hold them otherwise)."""

    async def main() -> tuple[list[str], int]:
        drain = Drain()
        release = asyncio.Event()
        release.set()
        before = server_ids()
        server, address = await _server(drain, release)
        core = CoreCalls.created_since(before)
        assert core is not None
        results: list[str] = []

        def clients() -> None:
            with grpc.insecure_channel(address) as channel:
                work = channel.unary_unary(METHOD)
                futures = [work.future(b"x", timeout=20) for _ in range(5)]
                for f in futures:
                    try:
                        f.result()
                        results.append("OK")
                    except grpc.RpcError as exc:
                        results.append(exc.code().name)

        thread = threading.Thread(target=clients)
        thread.start()
        # Block the event loop until gRPC core holds all five calls, unread.
        deadline = time.monotonic() + 10
        while (core.live() or 0) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        drain.mark_signal(core.live())  # as the signal handler does
        drain.begin()
        unread = drain.received_unread
        await asyncio.get_running_loop().run_in_executor(None, thread.join)
        await stop_server(server, drain, 10.0, time.monotonic)
        return results, unread

    results, unread = run(main())
    assert unread == 5
    assert results == ["OK"] * 5


# ---- the log throttle ------------------------------------------------------------------------------


def test_throttle_logs_one_line_per_key_and_interval_with_the_count_left_out() -> None:
    clock = FakeClock()
    throttle = Throttle(interval_s=60, clock=clock)
    assert throttle.note("missing_token") == 0
    assert [throttle.note("missing_token") for _ in range(5)] == [None] * 5
    assert throttle.note("invalid_token") == 0  # keys are independent
    clock.now += 60
    assert throttle.note("missing_token") == 5
    assert throttle.note("missing_token") is None
    assert throttle.left_out() == {"missing_token": 1}
    assert throttle.left_out() == {}
