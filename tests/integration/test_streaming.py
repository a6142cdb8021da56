"""Bidirectional streams through the generated client: one response per request id."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import pytest

from bertserve.v1 import fill_mask_pb2, next_sentence_pb2
from bertserve_client import AsyncBertClient, BertClient
from tests.support.server import RunningServer

pytestmark = pytest.mark.integration

TEXTS = ["Paris is the [MASK] of France.", "The [MASK] walked home.", "A [MASK] and a [MASK]."]


def test_stream_of_1000_requests_gets_one_response_each_and_an_error_only_for_the_bad_one(
    server: RunningServer,
) -> None:
    bad = "request-500"

    def inputs():  # type: ignore[no-untyped-def]
        for i in range(1000):
            text = "no mask here" if f"request-{i}" == bad else TEXTS[i % len(TEXTS)]
            yield f"request-{i}", fill_mask_pb2.FillMaskRequest(texts=[text], top_k=2)

    with BertClient(server.address, timeout=120) as client:
        results = list(client.fill_mask_stream(inputs()))
    counts = Counter(r.request_id for r in results)
    assert len(results) == 1000
    assert set(counts.values()) == {1}
    assert set(counts) == {f"request-{i}" for i in range(1000)}
    errors = {r.request_id: r.error for r in results if not r.ok}
    assert list(errors) == [bad]
    assert errors[bad].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "has no mask token" in errors[bad].message
    for r in results:
        if r.ok:
            text = TEXTS[int(r.request_id.split("-")[1]) % len(TEXTS)]
            assert len(r.response.results[0].masks) == text.count("[MASK]")


def test_next_sentence_stream_over_async_client(server: RunningServer) -> None:
    async def main() -> list[object]:
        async def inputs():  # type: ignore[no-untyped-def]
            for i in range(50):
                yield (
                    f"pair-{i}",
                    next_sentence_pb2.NextSentenceRequest(
                        pairs=[next_sentence_pb2.SentencePair(first="It rained.", second=f"Day {i} was wet.")]
                    ),
                )

        async with AsyncBertClient(server.address, timeout=60) as client:
            return [r async for r in client.next_sentence_stream(inputs())]

    results = asyncio.run(main())
    assert sorted(r.request_id for r in results) == sorted(f"pair-{i}" for i in range(50))  # type: ignore[attr-defined]
    assert all(r.ok and 0.0 < r.response.results[0].is_next_probability < 1.0 for r in results)  # type: ignore[attr-defined]
