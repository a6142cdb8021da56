"""Client retries of unary calls: the server's grpc-retry-pushback-ms hint, bounded attempts, the
call's deadline. A fake in-process gRPC server answers from a script (no torch, no Ray)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from bertserve.v1 import bert_service_pb2_grpc, fill_mask_pb2
from bertserve_client import AsyncBertClient, BertClient, BertServeError
from bertserve_client._rpc import RetryPolicy

WAIT_S = 10.0
PUSHBACK = "grpc-retry-pushback-ms"

# One scripted outcome: a status code and the pushback trailer to send with it (None: no trailer).
Outcome = tuple[grpc.StatusCode, str | None]
OVERLOADED_200: Outcome = (grpc.StatusCode.RESOURCE_EXHAUSTED, "200")


class ScriptedService(bert_service_pb2_grpc.BertServiceServicer):
    """FillMask fails with `script`'s outcomes in turn, then with `then` (None: answers)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.script: list[Outcome] = []
        self.then: Outcome | None = None
        self.arrivals: list[float] = []  # monotonic time of each call
        self.time_remaining: list[float | None] = []
        self.stream_calls = 0

    def FillMask(self, request: Any, context: grpc.ServicerContext) -> fill_mask_pb2.FillMaskResponse:
        with self.lock:
            self.arrivals.append(time.monotonic())
            self.time_remaining.append(context.time_remaining())
            outcome = self.script.pop(0) if self.script else self.then
        if outcome is not None:
            code, pushback = outcome
            if pushback is not None:
                context.set_trailing_metadata(((PUSHBACK, pushback),))
            context.abort(code, f"scripted {code.name}")
        return fill_mask_pb2.FillMaskResponse(model="bert")

    def FillMaskStream(self, request_iterator: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        with self.lock:
            self.stream_calls += 1
        for _ in request_iterator:
            context.set_trailing_metadata(((PUSHBACK, "10"),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "stream overloaded")
        yield from ()

    @property
    def calls(self) -> int:
        return len(self.arrivals)

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)]


@pytest.fixture
def service() -> ScriptedService:
    return ScriptedService()


@pytest.fixture
def address(service: ScriptedService) -> Iterator[str]:
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    bert_service_pb2_grpc.add_BertServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


def _code(error: pytest.ExceptionInfo[BertServeError]) -> grpc.StatusCode:
    return error.value.code


# ---- sync ----------------------------------------------------------------------------------------


def test_overloaded_calls_are_retried_after_the_pushback(address: str, service: ScriptedService) -> None:
    service.script = [OVERLOADED_200, OVERLOADED_200]
    with BertClient(address, timeout=WAIT_S, retries=3) as client:
        assert client.fill_mask("a [MASK].").model == "bert"
    assert service.calls == 3
    first, second = service.gaps()
    # Never sooner than the pushback; decorrelated jitter up to 4x it, then up to 4x the previous
    # wait (plus slack for the calls themselves). The draws: tests/unit/client/test_retry_jitter.py.
    assert 0.2 <= first < 4 * 0.2 + 0.3
    assert 0.2 <= second < 4 * first + 0.3


def test_retries_stop_after_n_and_raise_the_last_error(address: str, service: ScriptedService) -> None:
    service.then = (grpc.StatusCode.RESOURCE_EXHAUSTED, "10")
    with BertClient(address, timeout=WAIT_S, retries=2) as client, pytest.raises(BertServeError) as info:
        client.fill_mask("a [MASK].")
    assert _code(info) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert service.calls == 3


def test_retries_zero_disables_retrying(address: str, service: ScriptedService) -> None:
    service.then = OVERLOADED_200
    with BertClient(address, timeout=WAIT_S, retries=0) as client, pytest.raises(BertServeError):
        client.fill_mask("a [MASK].")
    assert service.calls == 1


def test_unavailable_without_a_trailer_is_retried_with_backoff(
    address: str, service: ScriptedService
) -> None:
    service.script = [(grpc.StatusCode.UNAVAILABLE, None)] * 2
    with BertClient(address, timeout=WAIT_S) as client:  # the default: 3 retries
        assert client.fill_mask("a [MASK].").model == "bert"
    assert service.calls == 3
    # Full jitter: uniform in [0, 0.1 s], then in [0, 0.2 s].
    assert all(gap < 0.2 + 0.3 for gap in service.gaps())


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INTERNAL]
)
def test_other_errors_are_not_retried(address: str, service: ScriptedService, code: grpc.StatusCode) -> None:
    service.then = (code, "10")
    with BertClient(address, timeout=WAIT_S, retries=3) as client, pytest.raises(BertServeError) as info:
        client.fill_mask("a [MASK].")
    assert _code(info) is code
    assert service.calls == 1


@pytest.mark.parametrize("pushback", ["-1", "soon", "1.5", ""])
def test_a_negative_or_non_numeric_pushback_means_do_not_retry(
    address: str, service: ScriptedService, pushback: str
) -> None:
    service.then = (grpc.StatusCode.RESOURCE_EXHAUSTED, pushback)
    with BertClient(address, timeout=WAIT_S, retries=3) as client, pytest.raises(BertServeError):
        client.fill_mask("a [MASK].")
    assert service.calls == 1


def test_no_retry_waits_past_the_deadline(address: str, service: ScriptedService) -> None:
    service.then = (grpc.StatusCode.RESOURCE_EXHAUSTED, "2000")
    start = time.monotonic()
    with BertClient(address, retries=3) as client, pytest.raises(BertServeError) as info:
        client.fill_mask("a [MASK].", timeout=1.0)
    assert _code(info) is grpc.StatusCode.RESOURCE_EXHAUSTED  # the server's answer, not a timeout
    assert service.calls == 1 and time.monotonic() - start < 0.9


def test_every_attempt_shares_the_one_deadline(address: str, service: ScriptedService) -> None:
    service.then = (grpc.StatusCode.RESOURCE_EXHAUSTED, "150")
    start = time.monotonic()
    with BertClient(address, retries=100) as client, pytest.raises(BertServeError):
        client.fill_mask("a [MASK].", timeout=1.0)
    assert time.monotonic() - start < 1.0 + 0.2
    # The first retry waits 0.15-0.6 s, the next ones up to four times the wait before.
    assert 2 <= service.calls <= 7
    remaining = [r for r in service.time_remaining if r is not None]
    assert len(remaining) == service.calls
    assert remaining == sorted(remaining, reverse=True) and remaining[0] <= 1.0 + 0.05  # clock rounding


def test_streams_are_not_retried(address: str, service: ScriptedService) -> None:
    with BertClient(address, timeout=WAIT_S, retries=3) as client, pytest.raises(BertServeError) as info:
        list(client.fill_mask_stream(["a [MASK]."]))
    assert _code(info) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert service.stream_calls == 1


def test_retries_must_be_a_non_negative_integer() -> None:
    with pytest.raises(ValueError, match="retries"):
        BertClient("127.0.0.1:1", retries=-1)
    with pytest.raises(ValueError, match="retries"):
        RetryPolicy(retries=1.5)  # type: ignore[arg-type]


def test_backoff_without_pushback_is_full_jitter_capped() -> None:
    class Unavailable(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.UNAVAILABLE

        def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
            return ()

    top = RetryPolicy(retries=10, rand=lambda: 1.0)
    assert [top.delay(Unavailable(), n) for n in range(8)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert RetryPolicy(retries=10, rand=lambda: 0.0).delay(Unavailable(), 3) == 0.0
    assert top.delay(Unavailable(), 10) is None


# ---- asyncio ---------------------------------------------------------------------------------------


def test_async_client_retries_after_the_pushback_and_stops_after_n(
    address: str, service: ScriptedService
) -> None:
    async def main() -> None:
        async with AsyncBertClient(address, timeout=WAIT_S, retries=2) as client:
            service.script = [OVERLOADED_200]
            assert (await client.fill_mask("a [MASK].")).model == "bert"
            assert service.calls == 2 and service.gaps()[0] >= 0.2
            service.then = (grpc.StatusCode.RESOURCE_EXHAUSTED, "10")
            with pytest.raises(BertServeError) as info:
                await client.fill_mask("a [MASK].")
            assert _code(info) is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert service.calls == 2 + 3

    asyncio.run(main())


def test_async_client_respects_the_deadline_and_skips_invalid_argument(
    address: str, service: ScriptedService
) -> None:
    async def main() -> None:
        async with AsyncBertClient(address, retries=3) as client:
            service.then = (grpc.StatusCode.RESOURCE_EXHAUSTED, "2000")
            start = time.monotonic()
            with pytest.raises(BertServeError):
                await client.fill_mask("a [MASK].", timeout=1.0)
            assert service.calls == 1 and time.monotonic() - start < 0.9
            service.then = (grpc.StatusCode.INVALID_ARGUMENT, None)
            with pytest.raises(BertServeError) as info:
                await client.fill_mask("a [MASK].", timeout=WAIT_S)
            assert _code(info) is grpc.StatusCode.INVALID_ARGUMENT
            assert service.calls == 2

    asyncio.run(main())


class CountingInterceptor(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Counts the unary calls the client makes (each attempt of a retried call is one)."""

    def __init__(self) -> None:
        self.calls = 0

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        self.calls += 1
        return continuation(client_call_details, request)


def test_a_message_over_the_server_size_limit_is_not_retried(service: ScriptedService) -> None:
    server = grpc.server(
        ThreadPoolExecutor(max_workers=2), options=[("grpc.max_receive_message_length", 1024)]
    )
    bert_service_pb2_grpc.add_BertServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    counter = CountingInterceptor()
    channel = grpc.intercept_channel(grpc.insecure_channel(f"127.0.0.1:{port}"), counter)
    try:
        with BertClient(channel=channel, timeout=WAIT_S, retries=3) as client:
            with pytest.raises(BertServeError, match="larger than max") as info:
                client.fill_mask("x [MASK] " * 1000)
            assert _code(info) is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert counter.calls == 1
            assert client.fill_mask("a [MASK].").model == "bert"  # small ones go through
    finally:
        channel.close()
        server.stop(grace=None)
