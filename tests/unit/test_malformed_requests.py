"""Request bytes that do not parse as the method's message get INVALID_ARGUMENT, not gRPC's
UNKNOWN naming the parser's exception; in a stream, the requests read before the malformed
message are answered, then the stream ends INVALID_ARGUMENT (servicer.add_to_server)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import grpc
import pytest

from bertserve.server.domain import FillMaskAnswer, FillMaskQuery, Timing
from bertserve.server.servicer import BertServicer, add_to_server
from bertserve.v1 import fill_mask_pb2

CORRUPT = b"\x0a\x05ab"  # field 1 says 5 bytes follow, 2 do
BAD_UTF8 = b"\x0a\x02\xff\xfe"  # a string field that is not UTF-8
BASE = "/bertserve.v1.BertService/"


class AnsweringDataPlane:
    registry: Any = None

    def __init__(self) -> None:
        self.seen: list[tuple[str, ...]] = []

    async def fill_mask(self, query: FillMaskQuery, deadline: float | None = None) -> FillMaskAnswer:
        self.seen.append(query.texts)
        return FillMaskAnswer((), "fake", Timing(1, 2, 3, 6))


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


async def _serve(dp: AnsweringDataPlane) -> tuple[grpc.aio.Server, grpc.aio.Channel]:
    server = grpc.aio.server()
    add_to_server(BertServicer(dp), server)  # type: ignore[arg-type]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, grpc.aio.insecure_channel(f"127.0.0.1:{port}")


def _stream_message(request_id: str, text: str) -> bytes:
    return fill_mask_pb2.FillMaskStreamRequest(
        request_id=request_id, request=fill_mask_pb2.FillMaskRequest(texts=[text])
    ).SerializeToString()


PAYLOADS = {"truncated": CORRUPT, "utf8": BAD_UTF8, "garbage": b"\xff\xff\xff\xff"}
CASES = [
    (method, message, name)
    for method, message in (
        ("FillMask", "FillMaskRequest"),
        ("GetModelInfo", "GetModelInfoRequest"),
        ("ListModels", "ListModelsRequest"),
    )
    for name in PAYLOADS
    if not (method == "ListModels" and name == "utf8")  # no string field there: it parses
]


@pytest.mark.parametrize(("method", "message", "payload_name"), CASES)
def test_unparseable_unary_request_is_invalid_argument(method: str, message: str, payload_name: str) -> None:
    payload = PAYLOADS[payload_name]

    async def main() -> tuple[grpc.StatusCode, str]:
        dp = AnsweringDataPlane()
        server, channel = await _serve(dp)
        try:
            call = channel.unary_unary(BASE + method, request_serializer=None, response_deserializer=None)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(payload, timeout=5)
            assert dp.seen == []
            return info.value.code(), info.value.details() or ""
        finally:
            await channel.close()
            await server.stop(None)

    code, details = run(main())
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == f"the request is not a valid bertserve.v1.{message} message"


def test_parseable_requests_still_work_through_add_to_server() -> None:
    async def main() -> Any:
        dp = AnsweringDataPlane()
        server, channel = await _serve(dp)
        try:
            fill = channel.unary_unary(
                BASE + "FillMask",
                request_serializer=fill_mask_pb2.FillMaskRequest.SerializeToString,
                response_deserializer=fill_mask_pb2.FillMaskResponse.FromString,
            )
            reply = await fill(fill_mask_pb2.FillMaskRequest(texts=["A [MASK]."]), timeout=5)
            return reply.model, dp.seen
        finally:
            await channel.close()
            await server.stop(None)

    assert run(main()) == ("fake", [("A [MASK].",)])


def test_stream_answers_the_requests_before_a_malformed_message_then_ends_invalid_argument() -> None:
    messages = [_stream_message("r0", "a"), _stream_message("r1", "b"), CORRUPT, _stream_message("r3", "c")]

    async def main() -> tuple[list[str], grpc.StatusCode, str, list[tuple[str, ...]]]:
        dp = AnsweringDataPlane()
        server, channel = await _serve(dp)
        try:
            call = channel.stream_stream(
                BASE + "FillMaskStream",
                request_serializer=None,
                response_deserializer=fill_mask_pb2.FillMaskStreamResponse.FromString,
            )(iter(messages), timeout=5)
            ids = [reply.request_id async for reply in _until_error(call)]
            return ids, await call.code(), await call.details() or "", dp.seen
        finally:
            await channel.close()
            await server.stop(None)

    ids, code, details, seen = run(main())
    assert sorted(ids) == ["r0", "r1"]  # answered, not dropped with the stream
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == "the request is not a valid bertserve.v1.FillMaskStreamRequest message"
    assert sorted(seen) == [("a",), ("b",)]  # nothing after the malformed message was run


async def _until_error(call: Any) -> Any:
    try:
        async for reply in call:
            yield reply
    except grpc.aio.AioRpcError:
        return
