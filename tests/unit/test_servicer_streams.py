"""Stream handling of the servicer with a fake data plane: per-request errors, bounded in-flight."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import grpc
import pytest

from bertserve.server import servicer
from bertserve.server.domain import FillMaskAnswer, FillMaskQuery, Timing
from bertserve.server.errors import InvalidInput
from bertserve.server.servicer import BertServicer
from bertserve.v1 import bert_service_pb2_grpc, fill_mask_pb2


class FakeDataPlane:
    """Answers FillMask after `gate` opens; 'bad' texts fail; tracks concurrency."""

    def __init__(self) -> None:
        self.registry: Any = None
        self.gate = asyncio.Event()
        self.active = 0
        self.max_active = 0
        self.seen = 0
        self.busy = asyncio.Event()  # set when `busy_at` requests are held at once
        self.busy_at = 1
        self.overrun = asyncio.Event()  # set when more than `busy_at` requests came in

    async def fill_mask(self, query: FillMaskQuery, deadline: float | None = None) -> FillMaskAnswer:
        self.seen += 1
        if self.seen > self.busy_at:
            self.overrun.set()
        if query.texts == ("bad",):
            raise InvalidInput("texts[0] has no mask token")
        if query.texts == ("boom",):
            raise RuntimeError("a bug with a secret path /etc/passwd")
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        if self.active >= self.busy_at:
            self.busy.set()
        try:
            await self.gate.wait()
        finally:
            self.active -= 1
        return FillMaskAnswer((), "fake", Timing(1, 2, 3, 6))


class _PermitWatch:
    """The servicer's `asyncio`, whose Semaphore (a stream's permits, one per unanswered request)
    sets `waiting` when a stream's reader has read a request it has no permit for."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    def Semaphore(self, value: int) -> asyncio.Semaphore:  # asyncio's name
        waiting = self.waiting

        class Watched(asyncio.Semaphore):
            async def acquire(self) -> Literal[True]:
                if self.locked():
                    waiting.set()
                return await super().acquire()

        return Watched(value)


async def _serve(dp: FakeDataPlane, max_inflight: int) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    bert_service_pb2_grpc.add_BertServiceServicer_to_server(BertServicer(dp, max_inflight), server)  # type: ignore[arg-type]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def _req(i: int, text: str) -> fill_mask_pb2.FillMaskStreamRequest:
    return fill_mask_pb2.FillMaskStreamRequest(
        request_id=f"r{i}", request=fill_mask_pb2.FillMaskRequest(texts=[text])
    )


def test_stream_answers_each_id_once_with_errors_only_for_bad_requests() -> None:
    async def main() -> None:
        dp = FakeDataPlane()
        dp.gate.set()
        server, port = await _serve(dp, 8)
        texts = ["ok [MASK]"] * 10 + ["bad"] + ["boom"] + ["ok [MASK]"] * 10
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = bert_service_pb2_grpc.BertServiceStub(channel)
            responses = [
                r async for r in stub.FillMaskStream(iter([_req(i, t) for i, t in enumerate(texts)]))
            ]
        await server.stop(None)
        by_id = {r.request_id: r for r in responses}
        assert len(responses) == len(by_id) == len(texts)
        assert by_id["r10"].error.code_name == "INVALID_ARGUMENT"
        # The field path starts at the stream message; no request id, no text.
        assert by_id["r10"].error.message == "request.texts[0] has no mask token"
        assert by_id["r11"].error.code_name == "INTERNAL"
        assert "/etc" not in by_id["r11"].error.message and "Traceback" not in by_id["r11"].error.message
        assert all(r.HasField("response") for k, r in by_id.items() if k not in ("r10", "r11"))

    asyncio.run(asyncio.wait_for(main(), 30))


@pytest.mark.parametrize("max_inflight", [1, 4])
def test_stream_never_has_more_than_max_inflight_requests_unanswered(
    max_inflight: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    permits = _PermitWatch()
    monkeypatch.setattr(servicer, "asyncio", permits)

    async def main() -> None:
        dp = FakeDataPlane()
        dp.busy_at = max_inflight
        server, port = await _serve(dp, max_inflight)
        sent = 0

        async def requests() -> Any:
            nonlocal sent
            for i in range(50):
                sent += 1
                yield _req(i, "ok [MASK]")

        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = bert_service_pb2_grpc.BertServiceStub(channel).FillMaskStream(requests())
            await dp.busy.wait()
            # The server has read the next request and waits for a permit to answer it (else it
            # passes the request on, too many).
            waits = [asyncio.ensure_future(e.wait()) for e in (permits.waiting, dp.overrun)]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for waiting in waits:
                waiting.cancel()
            assert dp.seen == max_inflight, "the server read more requests than it may hold"
            dp.gate.set()
            responses = [r async for r in call]
        await server.stop(None)
        assert len(responses) == 50
        assert dp.max_active <= max_inflight

    asyncio.run(asyncio.wait_for(main(), 30))


class _Remaining:
    def __init__(self, remaining: float | None) -> None:
        self._remaining = remaining

    def time_remaining(self) -> float | None:
        return self._remaining


@pytest.mark.parametrize(
    ("remaining", "code"),
    [
        (-0.01, "DEADLINE_EXCEEDED"),  # the server's own deadline fired
        (0.02, "DEADLINE_EXCEEDED"),  # the client's ran out first and its cancellation came in
        (0.2, "CANCELLED"),
        (9.5, "CANCELLED"),
        (None, "CANCELLED"),  # no deadline at all
    ],
)
def test_a_cancellation_at_the_deadline_counts_as_the_deadline(remaining: float | None, code: str) -> None:
    assert servicer._cancelled_code(_Remaining(remaining)) == code  # type: ignore[arg-type]
