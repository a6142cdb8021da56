"""`token=` on both clients: every call, unary and stream, carries `authorization: Bearer <token>`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from bertserve.v1 import bert_service_pb2_grpc, models_pb2, tokenize_pb2
from bertserve_client import AsyncBertClient, BertClient
from bertserve_client._channel import call_metadata
from tests.support.aio_server import local_aio_server

TOKEN = "client-token-3e8f"


class _Recorder(bert_service_pb2_grpc.BertServiceServicer):
    """Answers ListModels and TokenizeStream, recording each call's authorization metadata."""

    def __init__(self) -> None:
        self.seen: list[list[str]] = []

    def _record(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.seen.append([str(v) for k, v in context.invocation_metadata() or () if k == "authorization"])

    async def ListModels(
        self, request: models_pb2.ListModelsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> models_pb2.ListModelsResponse:
        self._record(context)
        return models_pb2.ListModelsResponse()

    async def TokenizeStream(
        self,
        request_iterator: AsyncIterator[tokenize_pb2.TokenizeStreamRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[tokenize_pb2.TokenizeStreamResponse]:
        self._record(context)
        async for item in request_iterator:
            yield tokenize_pb2.TokenizeStreamResponse(request_id=item.request_id)


def _serve_and_call(calls: Any) -> list[list[str]]:
    async def body() -> list[list[str]]:
        recorder = _Recorder()

        def register(server: grpc.aio.Server) -> None:
            bert_service_pb2_grpc.add_BertServiceServicer_to_server(recorder, server)

        async with local_aio_server(register) as address:
            await calls(address)
        return recorder.seen

    return asyncio.run(body())


def test_sync_client_sends_the_token_with_unary_and_stream_calls() -> None:
    async def calls(address: str) -> None:
        def blocking() -> None:
            with BertClient(address, timeout=10, token=TOKEN, metadata=[("x-api", "1")]) as client:
                client.list_models()
                assert sorted(r.request_id for r in client.tokenize_stream(["a", "b"])) == ["0", "1"]
            with BertClient(address, timeout=10) as client:
                client.list_models()

        await asyncio.to_thread(blocking)

    assert _serve_and_call(calls) == [[f"Bearer {TOKEN}"], [f"Bearer {TOKEN}"], []]


def test_async_client_sends_the_token_with_unary_and_stream_calls() -> None:
    async def calls(address: str) -> None:
        async with AsyncBertClient(address, timeout=10, token=TOKEN) as client:
            await client.list_models()
            results = [r async for r in client.tokenize_stream(["a"])]
            assert len(results) == 1

    assert _serve_and_call(calls) == [[f"Bearer {TOKEN}"], [f"Bearer {TOKEN}"]]


def test_call_metadata_adds_the_header_and_rejects_bad_tokens() -> None:
    assert call_metadata([("x", "1")], None) == (("x", "1"),)
    assert call_metadata([("x", "1")], f" {TOKEN}\n") == (("x", "1"), ("authorization", f"Bearer {TOKEN}"))
    for bad in ("", "   ", "two words", "tökén"):
        with pytest.raises(ValueError, match="printable ASCII"):
            BertClient("localhost:1", token=bad)
    with pytest.raises(ValueError, match="not both"):
        call_metadata([("Authorization", "Bearer x")], TOKEN)
