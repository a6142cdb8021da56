"""Unit tests of the bertserve Python client against a fake in-process gRPC server (no torch, no Ray)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import pickle
import shutil
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

import bertserve_client
from bertserve.v1 import (
    bert_service_pb2_grpc,
    common_pb2,
    fill_mask_pb2,
    models_pb2,
    next_sentence_pb2,
)
from bertserve_client import AsyncBertClient, BertClient, BertServeError, StreamResult

T = TypeVar("T")

WAIT_S = 10.0  # upper bound for event waits; a correct run never gets near it
BAD = "BAD"  # a stream request holding this text (or first sentence) gets a per-request Error
ABORT = "ABORT"  # a stream request holding this text aborts the whole stream
MISSING_MODEL = "missing"  # unary calls for this model fail with NOT_FOUND
SLOW_MODEL = "slow"  # unary calls for this model never answer before the RPC ends


# --------------------------------------------------------------------------------------------------
# Fake server


def fake_fill_mask_response(request: fill_mask_pb2.FillMaskRequest) -> fill_mask_pb2.FillMaskResponse:
    """One result per text; each candidate's sequence echoes the text so tests can match answers."""
    top_k = request.top_k if request.HasField("top_k") else 5

    def result(text: str) -> fill_mask_pb2.FillMaskResult:
        candidates = [
            fill_mask_pb2.FillMaskCandidate(token=f"w{i}", sequence=text, score=0.5) for i in range(top_k)
        ]
        return fill_mask_pb2.FillMaskResult(
            masks=[fill_mask_pb2.MaskPrediction(position=1, candidates=candidates)]
        )

    return fill_mask_pb2.FillMaskResponse(
        model=request.model or "bert-base", results=[result(text) for text in request.texts]
    )


def fake_next_sentence_response(
    request: next_sentence_pb2.NextSentenceRequest,
) -> next_sentence_pb2.NextSentenceResponse:
    """is_next_probability encodes the pair: len(first) / 100."""
    return next_sentence_pb2.NextSentenceResponse(
        model=request.model or "bert-base",
        results=[
            next_sentence_pb2.NextSentenceResult(is_next_probability=len(pair.first) / 100)
            for pair in request.pairs
        ],
    )


def invalid_argument(message: str) -> common_pb2.Error:
    code = grpc.StatusCode.INVALID_ARGUMENT
    return common_pb2.Error(code=code.value[0], code_name=code.name, message=message)


class FakeBertService(bert_service_pb2_grpc.BertServiceServicer):
    """Records what it receives; answers FillMaskStream in reversed chunks (out of order)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.unary_requests: list[Any] = []
        self.stream_requests: list[Any] = []
        self.time_remaining: list[float] = []
        self.metadata: list[dict[str, str]] = []
        self.stream_chunk = 7
        self.stream_request_seen = threading.Event()
        self.stream_ended = threading.Event()

    def _record(self, request: Any, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.unary_requests.append(request)
            self.time_remaining.append(context.time_remaining())
            self.metadata.append({key: str(value) for key, value in context.invocation_metadata()})

    def _unary_behaviour(self, model: str, context: grpc.ServicerContext) -> None:
        if model == MISSING_MODEL:
            context.abort(grpc.StatusCode.NOT_FOUND, f"model {model!r} is not served")
        if model == SLOW_MODEL:
            ended = threading.Event()
            context.add_callback(ended.set)
            ended.wait(WAIT_S * 3)  # wakes when the client's deadline ends the RPC

    def FillMask(self, request: Any, context: Any) -> fill_mask_pb2.FillMaskResponse:
        self._record(request, context)
        self._unary_behaviour(request.model, context)
        return fake_fill_mask_response(request)

    def NextSentence(self, request: Any, context: Any) -> next_sentence_pb2.NextSentenceResponse:
        self._record(request, context)
        self._unary_behaviour(request.model, context)
        return fake_next_sentence_response(request)

    def ListModels(self, request: Any, context: Any) -> models_pb2.ListModelsResponse:
        self._record(request, context)
        return models_pb2.ListModelsResponse(
            models=[
                models_pb2.ModelInfo(name="bert-base", is_default=True, mask_token="[MASK]"),
                models_pb2.ModelInfo(name="bert-large", mask_token="[MASK]"),
            ]
        )

    def GetModelInfo(self, request: Any, context: Any) -> models_pb2.GetModelInfoResponse:
        self._record(request, context)
        self._unary_behaviour(request.model, context)
        name = request.model or "bert-base"
        return models_pb2.GetModelInfoResponse(
            model=models_pb2.ModelInfo(name=name, is_default=not request.model)
        )

    def FillMaskStream(
        self, request_iterator: Any, context: Any
    ) -> Iterator[fill_mask_pb2.FillMaskStreamResponse]:
        context.add_callback(self.stream_ended.set)
        pending: list[fill_mask_pb2.FillMaskStreamRequest] = []
        for item in request_iterator:
            with self.lock:
                self.stream_requests.append(item)
            self.stream_request_seen.set()
            if ABORT in item.request.texts:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "stream budget spent")
            pending.append(item)
            if len(pending) >= self.stream_chunk:
                yield from (self._answer_fill_mask(p) for p in reversed(pending))
                pending.clear()
        yield from (self._answer_fill_mask(p) for p in reversed(pending))

    @staticmethod
    def _answer_fill_mask(item: fill_mask_pb2.FillMaskStreamRequest) -> fill_mask_pb2.FillMaskStreamResponse:
        if BAD in item.request.texts:
            return fill_mask_pb2.FillMaskStreamResponse(
                request_id=item.request_id, error=invalid_argument("text 0 has no [MASK] token")
            )
        return fill_mask_pb2.FillMaskStreamResponse(
            request_id=item.request_id, response=fake_fill_mask_response(item.request)
        )

    def NextSentenceStream(
        self, request_iterator: Any, context: Any
    ) -> Iterator[next_sentence_pb2.NextSentenceStreamResponse]:
        context.add_callback(self.stream_ended.set)
        for item in request_iterator:
            with self.lock:
                self.stream_requests.append(item)
            self.stream_request_seen.set()
            if any(pair.first == BAD for pair in item.request.pairs):
                yield next_sentence_pb2.NextSentenceStreamResponse(
                    request_id=item.request_id, error=invalid_argument("empty sentence")
                )
            else:
                yield next_sentence_pb2.NextSentenceStreamResponse(
                    request_id=item.request_id, response=fake_next_sentence_response(item.request)
                )


def start_server(
    service: FakeBertService, credentials: grpc.ServerCredentials | None = None
) -> tuple[grpc.Server, str]:
    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    bert_service_pb2_grpc.add_BertServiceServicer_to_server(service, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def service() -> FakeBertService:
    return FakeBertService()


@pytest.fixture
def address(service: FakeBertService) -> Iterator[str]:
    server, address = start_server(service)
    yield address
    server.stop(grace=None)


@pytest.fixture
def client(address: str) -> Iterator[BertClient]:
    with BertClient(address, timeout=WAIT_S) as client:
        yield client


def run(coroutine_fn: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await coroutine_fn()

    return asyncio.run(main())


# --------------------------------------------------------------------------------------------------
# Request building


def test_fill_mask_single_str_is_one_text(client: BertClient, service: FakeBertService) -> None:
    response = client.fill_mask("Paris is the [MASK] of France.")

    (request,) = service.unary_requests
    assert list(request.texts) == ["Paris is the [MASK] of France."]
    assert len(response.results) == 1


def test_fill_mask_sequence_sends_every_text_in_order(client: BertClient, service: FakeBertService) -> None:
    texts = ["a [MASK].", "b [MASK].", "c [MASK]."]

    response = client.fill_mask(texts)

    assert list(service.unary_requests[0].texts) == texts
    assert [r.masks[0].candidates[0].sequence for r in response.results] == texts


def test_fill_mask_top_k_is_unset_unless_given(client: BertClient, service: FakeBertService) -> None:
    client.fill_mask("a [MASK].")
    client.fill_mask("a [MASK].", top_k=3)
    client.fill_mask("a [MASK].", top_k=0)  # 0 is sent (the server rejects it), not dropped

    unset, three, zero = service.unary_requests
    assert not unset.HasField("top_k")
    assert three.HasField("top_k") and three.top_k == 3
    assert zero.HasField("top_k") and zero.top_k == 0


def test_fill_mask_sends_targets_and_model(client: BertClient, service: FakeBertService) -> None:
    client.fill_mask("a [MASK].", targets=["cat", "dog"], model="bert-large")
    client.fill_mask("a [MASK].")

    given, default = service.unary_requests
    assert list(given.targets) == ["cat", "dog"]
    assert given.model == "bert-large"
    assert list(default.targets) == []
    assert default.model == ""


def test_fill_mask_rejects_a_single_str_as_targets(client: BertClient) -> None:
    with pytest.raises(TypeError, match="targets"):
        client.fill_mask("a [MASK].", targets="cat")


def test_truncation_policy_is_truncate_only_when_asked(client: BertClient, service: FakeBertService) -> None:
    client.fill_mask("a [MASK].")
    client.fill_mask("a [MASK].", truncate=True)
    client.next_sentence("a", "b")
    client.next_sentence("a", "b", truncate=True)

    policies = [request.truncation for request in service.unary_requests]
    unspecified, truncate = common_pb2.TRUNCATION_POLICY_UNSPECIFIED, common_pb2.TRUNCATION_POLICY_TRUNCATE
    assert policies == [unspecified, truncate, unspecified, truncate]


def test_truncation_names_work_beside_the_truncate_flag(client: BertClient, service: FakeBertService) -> None:
    client.fill_mask("a [MASK].", truncation="reject")
    client.fill_mask("a [MASK].", truncate=True, truncation="truncate")
    client.next_sentence("a", "b", truncation="truncate")
    list(client.fill_mask_stream(["a [MASK]."], truncation="split"))  # sent; the server answers the error
    with pytest.raises(ValueError, match="truncate=True conflicts with truncation='reject'"):
        client.fill_mask("a [MASK].", truncate=True, truncation="reject")

    policies = [request.truncation for request in service.unary_requests]
    assert policies == [
        common_pb2.TRUNCATION_POLICY_REJECT,
        common_pb2.TRUNCATION_POLICY_TRUNCATE,
        common_pb2.TRUNCATION_POLICY_TRUNCATE,
    ]
    assert service.stream_requests[0].request.truncation == common_pb2.TRUNCATION_POLICY_SPLIT


def test_next_sentence_sends_one_pair(client: BertClient, service: FakeBertService) -> None:
    response = client.next_sentence("The sky is blue.", "It is sunny.", model="bert-base")

    (request,) = service.unary_requests
    assert [(p.first, p.second) for p in request.pairs] == [("The sky is blue.", "It is sunny.")]
    assert request.model == "bert-base"
    assert len(response.results) == 1


def test_next_sentence_pairs_sends_pairs_in_order(client: BertClient, service: FakeBertService) -> None:
    pairs = [("a", "b"), ("cc", "d"), ("eee", "f")]

    response = client.next_sentence_pairs(pairs)

    assert [(p.first, p.second) for p in service.unary_requests[0].pairs] == pairs
    assert [r.is_next_probability for r in response.results] == pytest.approx([0.01, 0.02, 0.03])


def test_list_models_and_model_info(client: BertClient, service: FakeBertService) -> None:
    models = client.list_models()
    default = client.model_info()
    large = client.model_info("bert-large")

    assert [m.name for m in models.models] == ["bert-base", "bert-large"]
    assert isinstance(default, models_pb2.ModelInfo)
    assert (default.name, default.is_default) == ("bert-base", True)
    assert large.name == "bert-large"
    assert [r.model for r in service.unary_requests[1:]] == ["", "bert-large"]


def test_metadata_is_sent_with_every_call(address: str, service: FakeBertService) -> None:
    with BertClient(address, timeout=WAIT_S, metadata=[("x-api-key", "secret")]) as client:
        client.fill_mask("a [MASK].")
        client.list_models()

    assert [m.get("x-api-key") for m in service.metadata] == ["secret", "secret"]


# --------------------------------------------------------------------------------------------------
# Errors and deadlines


def test_error_keeps_code_and_details(client: BertClient) -> None:
    with pytest.raises(BertServeError) as excinfo:
        client.fill_mask("a [MASK].", model=MISSING_MODEL)

    error = excinfo.value
    assert error.code is grpc.StatusCode.NOT_FOUND
    assert error.details == "model 'missing' is not served"
    assert str(error) == "NOT_FOUND: model 'missing' is not served"
    assert isinstance(error.__cause__, grpc.RpcError)
    assert error.__cause__.code() is grpc.StatusCode.NOT_FOUND


def test_model_info_error_is_mapped(client: BertClient) -> None:
    with pytest.raises(BertServeError) as excinfo:
        client.model_info(MISSING_MODEL)

    assert excinfo.value.code is grpc.StatusCode.NOT_FOUND


def test_bert_serve_error_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(BertServeError(grpc.StatusCode.UNAVAILABLE, "down")))

    assert (error.code, error.details, str(error)) == (
        grpc.StatusCode.UNAVAILABLE,
        "down",
        "UNAVAILABLE: down",
    )


def test_client_default_deadline_raises_deadline_exceeded(address: str) -> None:
    with BertClient(address, timeout=0.2) as client, pytest.raises(BertServeError) as excinfo:
        client.fill_mask("a [MASK].", model=SLOW_MODEL)

    assert excinfo.value.code is grpc.StatusCode.DEADLINE_EXCEEDED


def test_per_call_timeout_raises_deadline_exceeded(address: str) -> None:
    with BertClient(address) as client, pytest.raises(BertServeError) as excinfo:
        client.next_sentence("a", "b", model=SLOW_MODEL, timeout=0.2)

    assert excinfo.value.code is grpc.StatusCode.DEADLINE_EXCEEDED


def test_per_call_timeout_overrides_client_default(address: str, service: FakeBertService) -> None:
    with BertClient(address, timeout=5) as client:
        client.list_models()
        client.list_models(timeout=600)
    with BertClient(address) as client:
        client.list_models()

    default, overridden, none = service.time_remaining
    # gRPC may round the deadline up on the wire, hence the loose upper bounds.
    assert 0 < default <= 6
    assert 100 < overridden <= 602
    assert none > 10**6  # no deadline at all


# --------------------------------------------------------------------------------------------------
# Streaming


def test_stream_bad_request_gets_error_for_its_id_only(client: BertClient, service: FakeBertService) -> None:
    texts = [f"text {i} [MASK]." for i in range(1000)]
    texts[500] = BAD

    results = list(client.fill_mask_stream(texts))

    ids = [r.request_id for r in results]
    assert sorted(ids, key=int) == [str(i) for i in range(1000)]  # exactly one result per request_id
    assert ids != sorted(ids, key=int)  # the fake answered out of order
    failed = [r for r in results if not r.ok]
    assert [r.request_id for r in failed] == ["500"]
    assert failed[0].response is None
    assert failed[0].error is not None
    assert (failed[0].error.code, failed[0].error.code_name) == (3, "INVALID_ARGUMENT")
    for result in results:
        if result.ok:
            assert result.error is None and result.response is not None
            assert result.response.results[0].masks[0].candidates[0].sequence == texts[int(result.request_id)]


def test_stream_keeps_given_request_ids(client: BertClient) -> None:
    inputs: list[bertserve_client.FillMaskInput] = [
        ("first", fill_mask_pb2.FillMaskRequest(texts=["x [MASK]."])),
        "y [MASK].",
        fill_mask_pb2.FillMaskRequest(texts=["z [MASK]."]),
        ("last", fill_mask_pb2.FillMaskRequest(texts=[BAD])),
    ]

    results = {r.request_id: r for r in client.fill_mask_stream(inputs)}

    assert set(results) == {"first", "1", "2", "last"}
    assert not results["last"].ok
    assert results["1"].response is not None
    assert results["1"].response.results[0].masks[0].candidates[0].sequence == "y [MASK]."


def test_stream_applies_keyword_arguments_to_text_inputs_only(
    client: BertClient, service: FakeBertService
) -> None:
    given = fill_mask_pb2.FillMaskRequest(texts=["b [MASK]."], model="other")

    results = list(
        client.fill_mask_stream(
            ["a [MASK].", given], top_k=2, targets=["x"], model="bert-large", truncate=True
        )
    )

    assert len(results) == 2
    built, sent_as_is = sorted(service.stream_requests, key=lambda r: r.request_id)
    assert list(built.request.texts) == ["a [MASK]."]
    assert built.request.top_k == 2
    assert list(built.request.targets) == ["x"]
    assert built.request.model == "bert-large"
    assert built.request.truncation == common_pb2.TRUNCATION_POLICY_TRUNCATE
    assert sent_as_is.request == given


def test_stream_reads_inputs_lazily(client: BertClient, service: FakeBertService) -> None:
    service.stream_chunk = 1  # answer each request as soon as it arrives
    first_result_seen = threading.Event()
    waited: list[bool] = []

    def inputs() -> Iterator[str]:
        yield "a [MASK]."
        waited.append(first_result_seen.wait(WAIT_S))  # only a lazy reader lets the result through
        yield "b [MASK]."

    results = []
    for result in client.fill_mask_stream(inputs()):
        results.append(result)
        first_result_seen.set()

    assert waited == [True]
    assert [r.request_id for r in results] == ["0", "1"]


def test_stream_failure_raises_bert_serve_error(client: BertClient) -> None:
    with pytest.raises(BertServeError) as excinfo:
        list(client.fill_mask_stream(["a [MASK].", ABORT, "b [MASK]."]))

    assert excinfo.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert excinfo.value.details == "stream budget spent"
    assert isinstance(excinfo.value.__cause__, grpc.RpcError)


def test_stream_input_error_is_raised_and_cancels_stream(
    client: BertClient, service: FakeBertService
) -> None:
    def inputs() -> Iterator[str]:
        yield "a [MASK]."
        assert service.stream_request_seen.wait(WAIT_S)  # the server is handling the stream
        raise ValueError("input source broke")

    with pytest.raises(ValueError, match="input source broke"):
        list(client.fill_mask_stream(inputs()))

    assert service.stream_ended.wait(WAIT_S)


def test_stream_rejects_inputs_of_the_wrong_type(client: BertClient) -> None:
    with pytest.raises(TypeError, match="not a single str"):
        client.fill_mask_stream("a [MASK].")
    with pytest.raises(TypeError, match="stream input #1"):
        list(client.fill_mask_stream(["a [MASK].", 42]))  # type: ignore[list-item]
    with pytest.raises(TypeError, match="stream input #0"):
        list(client.next_sentence_stream([("a", "b", "c")]))  # type: ignore[list-item]


def test_stream_closed_early_cancels_the_rpc(client: BertClient, service: FakeBertService) -> None:
    service.stream_chunk = 1

    def endless() -> Iterator[str]:
        i = 0
        while True:
            yield f"text {i} [MASK]."
            i += 1

    results = client.fill_mask_stream(endless())
    first = next(results)
    results.close()

    assert first.ok
    assert service.stream_ended.wait(WAIT_S)


def test_stream_deadline_raises_deadline_exceeded(client: BertClient) -> None:
    never_sent = threading.Event()

    def stalled() -> Iterator[str]:
        yield "a [MASK]."
        never_sent.wait(WAIT_S)  # the stream's deadline passes while the input source stalls

    with pytest.raises(BertServeError) as excinfo:
        list(client.fill_mask_stream(stalled(), timeout=0.3))
    never_sent.set()

    assert excinfo.value.code is grpc.StatusCode.DEADLINE_EXCEEDED


def test_next_sentence_stream_bad_pair_gets_error_for_its_id_only(client: BertClient) -> None:
    inputs: list[bertserve_client.NextSentenceInput] = [
        ("aa", "b"),
        (BAD, "b"),
        ("custom", next_sentence_pb2.NextSentenceRequest(pairs=[next_sentence_pb2.SentencePair(first="c")])),
        next_sentence_pb2.NextSentenceRequest(pairs=[next_sentence_pb2.SentencePair(first="dddd")]),
    ]

    results = {r.request_id: r for r in client.next_sentence_stream(inputs)}

    assert set(results) == {"0", "1", "custom", "3"}
    assert [rid for rid, r in results.items() if not r.ok] == ["1"]
    probability = {rid: r.response.results[0].is_next_probability for rid, r in results.items() if r.response}
    assert probability == pytest.approx({"0": 0.02, "custom": 0.01, "3": 0.04})


def test_stream_result_ok_reflects_error() -> None:
    ok = StreamResult("1", response=fill_mask_pb2.FillMaskResponse())
    failed: StreamResult[fill_mask_pb2.FillMaskResponse] = StreamResult("2", error=invalid_argument("bad"))

    assert ok.ok and not failed.ok
    with pytest.raises(AttributeError):
        ok.request_id = "3"  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------
# asyncio client


def test_async_unary_calls(address: str, service: FakeBertService) -> None:
    async def body() -> None:
        async with AsyncBertClient(address, timeout=WAIT_S) as client:
            fill = await client.fill_mask("a [MASK].", top_k=2, truncate=True)
            pair = await client.next_sentence("aaa", "b")
            pairs = await client.next_sentence_pairs([("a", "b"), ("cc", "d")])
            models = await client.list_models()
            info = await client.model_info("bert-large")
        assert len(fill.results[0].masks[0].candidates) == 2
        assert pair.results[0].is_next_probability == pytest.approx(0.03)
        assert len(pairs.results) == 2
        assert [m.name for m in models.models] == ["bert-base", "bert-large"]
        assert info.name == "bert-large"

    run(body)
    fill_request = service.unary_requests[0]
    assert list(fill_request.texts) == ["a [MASK]."]
    assert fill_request.top_k == 2
    assert fill_request.truncation == common_pb2.TRUNCATION_POLICY_TRUNCATE


def test_async_error_keeps_code_and_details(address: str) -> None:
    async def body() -> BertServeError:
        async with AsyncBertClient(address, timeout=WAIT_S) as client:
            with pytest.raises(BertServeError) as excinfo:
                await client.fill_mask("a [MASK].", model=MISSING_MODEL)
        return excinfo.value

    error = run(body)
    assert error.code is grpc.StatusCode.NOT_FOUND
    assert error.details == "model 'missing' is not served"
    assert isinstance(error.__cause__, grpc.aio.AioRpcError)


def test_async_deadline_raises_deadline_exceeded(address: str) -> None:
    async def body() -> tuple[BertServeError, BertServeError]:
        async with AsyncBertClient(address, timeout=0.2) as client:
            with pytest.raises(BertServeError) as by_default:
                await client.fill_mask("a [MASK].", model=SLOW_MODEL)
        async with AsyncBertClient(address) as client:
            with pytest.raises(BertServeError) as by_call:
                await client.model_info(SLOW_MODEL, timeout=0.2)
        return by_default.value, by_call.value

    by_default, by_call = run(body)
    assert by_default.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert by_call.code is grpc.StatusCode.DEADLINE_EXCEEDED


def test_async_stream_with_async_generator_input_gets_one_result_per_id(address: str) -> None:
    async def inputs() -> AsyncIterator[str]:
        for i in range(1000):
            yield BAD if i == 321 else f"text {i} [MASK]."

    async def body() -> list[StreamResult[fill_mask_pb2.FillMaskResponse]]:
        async with AsyncBertClient(address, timeout=WAIT_S) as client:
            return [result async for result in client.fill_mask_stream(inputs(), top_k=1)]

    results = run(body)
    ids = [r.request_id for r in results]
    assert sorted(ids, key=int) == [str(i) for i in range(1000)]
    assert ids != sorted(ids, key=int)
    assert [r.request_id for r in results if not r.ok] == ["321"]
    for result in results:
        if result.ok:
            assert result.response is not None
            assert (
                result.response.results[0].masks[0].candidates[0].sequence
                == f"text {result.request_id} [MASK]."
            )


def test_async_stream_accepts_a_plain_iterable(address: str) -> None:
    async def body() -> dict[str, StreamResult[next_sentence_pb2.NextSentenceResponse]]:
        async with AsyncBertClient(address, timeout=WAIT_S) as client:
            return {r.request_id: r async for r in client.next_sentence_stream([("a", "b"), (BAD, "c")])}

    results = run(body)
    assert set(results) == {"0", "1"}
    assert results["0"].ok and not results["1"].ok


def test_async_stream_input_error_is_raised_not_cancelled(address: str, service: FakeBertService) -> None:
    async def inputs() -> AsyncIterator[str]:
        yield "a [MASK]."
        assert await asyncio.to_thread(service.stream_request_seen.wait, WAIT_S)  # the server is handling it
        raise ValueError("input source broke")

    async def body() -> None:
        async with AsyncBertClient(address, timeout=WAIT_S) as client:
            with pytest.raises(ValueError, match="input source broke"):
                async for _ in client.fill_mask_stream(inputs()):
                    pass

    run(body)
    assert service.stream_ended.wait(WAIT_S)


def test_async_stream_closed_early_cancels_the_rpc(address: str, service: FakeBertService) -> None:
    service.stream_chunk = 1

    async def endless() -> AsyncIterator[str]:
        i = 0
        while True:
            yield f"text {i} [MASK]."
            i += 1

    async def body() -> StreamResult[fill_mask_pb2.FillMaskResponse]:
        async with AsyncBertClient(address, timeout=WAIT_S) as client:
            results = client.fill_mask_stream(endless())
            first = await anext(results)
            await results.aclose()
            return first

    assert run(body).ok
    assert service.stream_ended.wait(WAIT_S)


def test_async_stream_failure_raises_bert_serve_error(address: str) -> None:
    async def body() -> BertServeError:
        async with AsyncBertClient(address, timeout=WAIT_S) as client:
            with pytest.raises(BertServeError) as excinfo:
                async for _ in client.fill_mask_stream(["a [MASK].", ABORT]):
                    pass
        return excinfo.value

    assert run(body).code is grpc.StatusCode.RESOURCE_EXHAUSTED


# --------------------------------------------------------------------------------------------------
# Channels and TLS


@dataclass(frozen=True)
class Pki:
    ca: bytes
    server_key: bytes
    server_cert: bytes
    client_key: bytes
    client_cert: bytes


def _pki_with_cryptography() -> Pki:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("bertserve test CA"))
        .issuer_name(name("bertserve test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(common_name: str, san: list[x509.GeneralName] | None) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common_name))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return pem_key(key), cert.public_bytes(serialization.Encoding.PEM)

    server_key, server_cert = leaf(
        "localhost", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    client_key, client_cert = leaf("bertserve test client", None)
    return Pki(
        ca_cert.public_bytes(serialization.Encoding.PEM), server_key, server_cert, client_key, client_cert
    )


def _pki_with_openssl(directory: Path) -> Pki:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("neither the cryptography package nor the openssl CLI is available")

    def sh(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True)

    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"]
    sh("req", "-x509", *new_key, "-subj", "/CN=bertserve test CA", "-keyout", "ca.key", "-out", "ca.pem")
    (directory / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for leaf, subject in (("server", "/CN=localhost"), ("client", "/CN=bertserve test client")):
        sh("req", *new_key[:-2], "-subj", subject, "-keyout", f"{leaf}.key", "-out", f"{leaf}.csr")
        sign = ["x509", "-req", "-in", f"{leaf}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial"]
        extfile = ["-extfile", "server.ext"] if leaf == "server" else []
        sh(*sign, "-out", f"{leaf}.pem", "-days", "1", *extfile)

    def read(name: str) -> bytes:
        return (directory / name).read_bytes()

    return Pki(read("ca.pem"), read("server.key"), read("server.pem"), read("client.key"), read("client.pem"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        return _pki_with_openssl(tmp_path_factory.mktemp("pki"))
    return _pki_with_cryptography()


@pytest.fixture
def tls_address(service: FakeBertService, pki: Pki) -> Iterator[str]:
    credentials = grpc.ssl_server_credentials([(pki.server_key, pki.server_cert)])
    server, address = start_server(service, credentials)
    yield address
    server.stop(grace=None)


@pytest.fixture
def mtls_address(service: FakeBertService, pki: Pki) -> Iterator[str]:
    credentials = grpc.ssl_server_credentials(
        [(pki.server_key, pki.server_cert)], root_certificates=pki.ca, require_client_auth=True
    )
    server, address = start_server(service, credentials)
    yield address
    server.stop(grace=None)


def test_tls_call_works_with_trusted_root(tls_address: str, pki: Pki) -> None:
    with BertClient(tls_address, timeout=WAIT_S, tls=True, root_certificates=pki.ca) as client:
        response = client.fill_mask("a [MASK].")

    assert len(response.results) == 1


def test_async_tls_call_works_with_trusted_root(tls_address: str, pki: Pki) -> None:
    async def body() -> models_pb2.ListModelsResponse:
        async with AsyncBertClient(tls_address, timeout=WAIT_S, tls=True, root_certificates=pki.ca) as client:
            return await client.list_models()

    assert len(run(body).models) == 2


def test_plaintext_client_fails_against_tls_server(tls_address: str) -> None:
    with BertClient(tls_address, timeout=WAIT_S) as client, pytest.raises(BertServeError) as excinfo:
        client.fill_mask("a [MASK].")

    assert excinfo.value.code is grpc.StatusCode.UNAVAILABLE


def test_tls_client_fails_without_trusting_the_server_ca(tls_address: str) -> None:
    with (
        BertClient(tls_address, timeout=WAIT_S, tls=True) as client,
        pytest.raises(BertServeError) as excinfo,
    ):
        client.list_models()  # system roots do not include the test CA

    assert excinfo.value.code is grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_needs_the_client_certificate(mtls_address: str, pki: Pki) -> None:
    with BertClient(
        mtls_address,
        timeout=WAIT_S,
        tls=True,
        root_certificates=pki.ca,
        private_key=pki.client_key,
        certificate_chain=pki.client_cert,
    ) as client:
        assert client.model_info().name == "bert-base"
    with (
        BertClient(mtls_address, timeout=WAIT_S, tls=True, root_certificates=pki.ca) as client,
        pytest.raises(BertServeError) as excinfo,
    ):
        client.model_info()

    assert excinfo.value.code is grpc.StatusCode.UNAVAILABLE


def test_inconsistent_tls_arguments_are_rejected(pki: Pki) -> None:
    with pytest.raises(ValueError, match="tls=True"):
        BertClient(root_certificates=pki.ca)
    with pytest.raises(ValueError, match="both private_key and certificate_chain"):
        BertClient(tls=True, private_key=pki.client_key)
    with pytest.raises(ValueError, match="channel="):
        BertClient(channel=grpc.insecure_channel("localhost:1"), tls=True)


def test_given_channel_is_used_and_left_open(address: str) -> None:
    channel = grpc.insecure_channel(address)
    try:
        with BertClient(channel=channel, timeout=WAIT_S) as client:
            assert client.channel is channel
            client.list_models()
        # close() left the caller's channel usable
        assert BertClient(channel=channel, timeout=WAIT_S).list_models().models
    finally:
        channel.close()


# --------------------------------------------------------------------------------------------------
# Packaging


def test_import_does_not_pull_heavy_dependencies() -> None:
    client_root = Path(bertserve_client.__file__).resolve().parent.parent
    code = (
        "import sys, bertserve_client\n"
        "print(','.join(m for m in ('torch', 'transformers', 'ray', 'numpy') if m in sys.modules))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(client_root), os.environ.get("PYTHONPATH", "")]))
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, timeout=60
    )

    assert completed.stdout.strip() == ""
