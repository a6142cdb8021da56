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


# ---- every other service: the ParseGuard interceptor (server/interceptors.py) -------------------


async def _serve_library_services() -> tuple[grpc.aio.Server, grpc.aio.Channel]:
    """Health and reflection (v1 and v1alpha): library servicers, behind ParseGuard as in app.py."""
    from grpc_health.v1 import health_pb2_grpc

    from bertserve.server import reflection
    from bertserve.server.health import DrainingHealthServicer
    from bertserve.server.interceptors import ParseGuard

    server = grpc.aio.server(interceptors=[ParseGuard()])
    health_pb2_grpc.add_HealthServicer_to_server(DrainingHealthServicer(), server)
    reflection.enable(["grpc.health.v1.Health"], server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, grpc.aio.insecure_channel(f"127.0.0.1:{port}")


@pytest.mark.parametrize(
    ("method", "streaming"),
    [
        ("/grpc.health.v1.Health/Check", False),
        ("/grpc.health.v1.Health/Watch", False),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", True),
        ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", True),
    ],
)
def test_library_services_answer_malformed_bytes_with_invalid_argument(method: str, streaming: bool) -> None:
    async def main() -> tuple[grpc.StatusCode, str]:
        server, channel = await _serve_library_services()
        try:
            if streaming:
                call: Any = channel.stream_stream(method)(iter([CORRUPT]), timeout=10)
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    async for _ in call:
                        pass
            elif method.endswith("Watch"):
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    async for _ in channel.unary_stream(method)(BAD_UTF8, timeout=10):
                        pass
            else:
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await channel.unary_unary(method)(BAD_UTF8, timeout=10)
            return failed.value.code(), failed.value.details() or ""
        finally:
            await channel.close()
            await server.stop(None)

    code, details = run(main())
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == f"the request is not a valid message for {method}"


def test_reflection_v1_lists_the_services_like_v1alpha() -> None:
    from grpc_reflection.v1alpha import reflection_pb2

    from bertserve.server import reflection

    async def main() -> dict[str, list[str]]:
        server, channel = await _serve_library_services()
        listed: dict[str, list[str]] = {}
        try:
            v1_request, v1_response = reflection._v1_messages()
            for name, request, response in (
                ("v1alpha", reflection_pb2.ServerReflectionRequest, reflection_pb2.ServerReflectionResponse),
                ("v1", v1_request, v1_response),
            ):
                call = channel.stream_stream(
                    f"/grpc.reflection.{name}.ServerReflection/ServerReflectionInfo",
                    request_serializer=request.SerializeToString,
                    response_deserializer=response.FromString,
                )(iter([request(list_services="")]), timeout=10)
                async for reply in call:
                    listed[name] = sorted(s.name for s in reply.list_services_response.service)
            return listed
        finally:
            await channel.close()
            await server.stop(None)

    listed = run(main())
    assert listed["v1"] == listed["v1alpha"]
    assert set(reflection.SERVICE_NAMES) <= set(listed["v1"])
