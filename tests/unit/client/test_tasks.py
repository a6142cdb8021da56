"""Unit tests of the client methods for ClassifySequence, ClassifyTokens, AnswerQuestion, Embed and
Tokenize (unary and streaming, sync and asyncio) against a fake in-process gRPC server."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

import bertserve_client
from bertserve.v1 import (
    answer_question_pb2,
    bert_service_pb2_grpc,
    classify_sequence_pb2,
    classify_tokens_pb2,
    common_pb2,
    embed_pb2,
    fill_mask_pb2,
    next_sentence_pb2,
    tokenize_pb2,
)
from bertserve_client import AsyncBertClient, BertClient, BertServeError, StreamResult

WAIT_S = 10.0
BAD = "BAD"  # a stream request holding this text (or question) gets a per-request Error
MISSING_MODEL = "missing"  # unary calls for this model fail with NOT_FOUND

SEQ = classify_sequence_pb2
TOK = classify_tokens_pb2
QA = answer_question_pb2
EMB = embed_pb2
TKN = tokenize_pb2
UNSPECIFIED = common_pb2.TRUNCATION_POLICY_UNSPECIFIED


# --------------------------------------------------------------------------------------------------
# Fake server: each response is derived from its request, so a test can tell which request it answers.


def classify_sequence_response(request: SEQ.ClassifySequenceRequest) -> SEQ.ClassifySequenceResponse:
    def label(item: SEQ.SequenceInput) -> str:
        return f"{item.text}|{item.text_pair}" if item.HasField("text_pair") else item.text

    return SEQ.ClassifySequenceResponse(
        model=request.model or "bert-cls",
        results=[
            SEQ.ClassifySequenceResult(
                labels=[SEQ.LabelScore(label=label(item), score=0.75, label_id=1)],
                input=common_pb2.InputStats(num_tokens=len(item.text), windows=1),
            )
            for item in request.inputs
        ],
    )


def classify_tokens_response(request: TOK.ClassifyTokensRequest) -> TOK.ClassifyTokensResponse:
    return TOK.ClassifyTokensResponse(
        model=request.model or "bert-ner",
        results=[
            TOK.ClassifyTokensResult(entities=[TOK.Entity(label="PER", word=text, start=0, end=len(text))])
            for text in request.texts
        ],
    )


def answer_question_response(request: QA.AnswerQuestionRequest) -> QA.AnswerQuestionResponse:
    return QA.AnswerQuestionResponse(
        model=request.model or "bert-qa",
        results=[
            QA.AnswerQuestionResult(
                answers=[QA.Answer(text=item.context[:4], score=0.5, start=0, end=len(item.context[:4]))]
            )
            for item in request.inputs
        ],
    )


def embed_response(request: EMB.EmbedRequest) -> EMB.EmbedResponse:
    return EMB.EmbedResponse(
        model=request.model or "bert-base",
        dimensions=2,
        embeddings=[EMB.Embedding(values=[float(len(text)), 1.0]) for text in request.texts],
    )


def tokenize_response(request: TKN.TokenizeRequest) -> TKN.TokenizeResponse:
    return TKN.TokenizeResponse(
        model=request.model or "bert-base",
        max_sequence_length=512,
        results=[
            TKN.TokenizeResult(
                tokens=[TKN.Token(id=i, token=word, word=i) for i, word in enumerate(text.split())],
                num_tokens=len(text.split()),
            )
            for text in request.texts
        ],
    )


@dataclass(frozen=True)
class Task:
    """How the fake answers one task, and what of a request marks it BAD."""

    respond: Callable[[Any], Message]
    stream_response: Callable[..., Message]
    texts: Callable[[Any], list[str]]


TASKS: dict[str, Task] = {
    "ClassifySequence": Task(
        classify_sequence_response,
        SEQ.ClassifySequenceStreamResponse,
        lambda request: [item.text for item in request.inputs],
    ),
    "ClassifyTokens": Task(
        classify_tokens_response, TOK.ClassifyTokensStreamResponse, lambda request: list(request.texts)
    ),
    "AnswerQuestion": Task(
        answer_question_response,
        QA.AnswerQuestionStreamResponse,
        lambda request: [item.question for item in request.inputs],
    ),
    "Embed": Task(embed_response, EMB.EmbedStreamResponse, lambda request: list(request.texts)),
    "Tokenize": Task(tokenize_response, TKN.TokenizeStreamResponse, lambda request: list(request.texts)),
}


def invalid_argument(message: str) -> common_pb2.Error:
    code = grpc.StatusCode.INVALID_ARGUMENT
    return common_pb2.Error(code=code.value[0], code_name=code.name, message=message)


class FakeTaskService(bert_service_pb2_grpc.BertServiceServicer):
    """Records every request; answers each stream in reverse order once its input ends."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.unary_requests: list[Any] = []
        self.stream_requests: list[Any] = []

    def _unary(self, task: str, request: Any, context: grpc.ServicerContext) -> Message:
        with self.lock:
            self.unary_requests.append(request)
        if request.model == MISSING_MODEL:
            context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.model!r} is not served")
        return TASKS[task].respond(request)

    def _stream(self, task: str, request_iterator: Any) -> Iterator[Message]:
        spec = TASKS[task]
        received = []
        for item in request_iterator:
            with self.lock:
                self.stream_requests.append(item)
            received.append(item)
        for item in reversed(received):
            if BAD in spec.texts(item.request):
                yield spec.stream_response(request_id=item.request_id, error=invalid_argument("bad input"))
            else:
                yield spec.stream_response(request_id=item.request_id, response=spec.respond(item.request))

    def ClassifySequence(self, request: Any, context: Any) -> Any:
        return self._unary("ClassifySequence", request, context)

    def ClassifyTokens(self, request: Any, context: Any) -> Any:
        return self._unary("ClassifyTokens", request, context)

    def AnswerQuestion(self, request: Any, context: Any) -> Any:
        return self._unary("AnswerQuestion", request, context)

    def Embed(self, request: Any, context: Any) -> Any:
        return self._unary("Embed", request, context)

    def Tokenize(self, request: Any, context: Any) -> Any:
        return self._unary("Tokenize", request, context)

    def ClassifySequenceStream(self, request_iterator: Any, context: Any) -> Any:
        return self._stream("ClassifySequence", request_iterator)

    def ClassifyTokensStream(self, request_iterator: Any, context: Any) -> Any:
        return self._stream("ClassifyTokens", request_iterator)

    def AnswerQuestionStream(self, request_iterator: Any, context: Any) -> Any:
        return self._stream("AnswerQuestion", request_iterator)

    def EmbedStream(self, request_iterator: Any, context: Any) -> Any:
        return self._stream("Embed", request_iterator)

    def TokenizeStream(self, request_iterator: Any, context: Any) -> Any:
        return self._stream("Tokenize", request_iterator)


@pytest.fixture
def service() -> FakeTaskService:
    return FakeTaskService()


@pytest.fixture
def address(service: FakeTaskService) -> Iterator[str]:
    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    bert_service_pb2_grpc.add_BertServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


@pytest.fixture
def client(address: str) -> Iterator[BertClient]:
    with BertClient(address, timeout=WAIT_S) as client:
        yield client


def call_sync(address: str, method: str, *args: Any, **kwargs: Any) -> Any:
    with BertClient(address, timeout=WAIT_S) as client:
        return getattr(client, method)(*args, **kwargs)


def call_async(address: str, method: str, *args: Any, **kwargs: Any) -> Any:
    async def main() -> Any:
        async with AsyncBertClient(address, timeout=WAIT_S) as client:
            return await getattr(client, method)(*args, **kwargs)

    return asyncio.run(main())


def stream_sync(address: str, method: str, inputs: Sequence[Any], **kwargs: Any) -> list[StreamResult[Any]]:
    with BertClient(address, timeout=WAIT_S) as client:
        return list(getattr(client, method)(inputs, **kwargs))


def stream_async(address: str, method: str, inputs: Sequence[Any], **kwargs: Any) -> list[StreamResult[Any]]:
    async def source() -> AsyncIterator[Any]:
        for item in inputs:
            await asyncio.sleep(0)
            yield item

    async def main() -> list[StreamResult[Any]]:
        async with AsyncBertClient(address, timeout=WAIT_S) as client:
            return [result async for result in getattr(client, method)(source(), **kwargs)]

    return asyncio.run(main())


CALLERS = {"sync": call_sync, "async": call_async}
STREAMERS = {"sync": stream_sync, "async": stream_async}


# --------------------------------------------------------------------------------------------------
# Unary calls: the exact request the server receives, and the response that comes back.


@dataclass(frozen=True)
class UnaryCase:
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    expected: Message  # the request the server must receive, unset optionals included

    @property
    def task(self) -> str:
        return type(self.expected).__name__.removesuffix("Request")


def _seq(*items: str | tuple[str, str]) -> list[SEQ.SequenceInput]:
    return [
        SEQ.SequenceInput(text=item)
        if isinstance(item, str)
        else SEQ.SequenceInput(text=item[0], text_pair=item[1])
        for item in items
    ]


def _qc(*pairs: tuple[str, str]) -> list[QA.QuestionContext]:
    return [QA.QuestionContext(question=q, context=c) for q, c in pairs]


UNARY_CASES = {
    # classify_sequence
    "seq-text-defaults": UnaryCase(
        "classify_sequence", ("I loved it.",), {}, SEQ.ClassifySequenceRequest(inputs=_seq("I loved it."))
    ),
    "seq-one-pair": UnaryCase(
        "classify_sequence",
        (("A man sleeps.", "A person rests."),),
        {},
        SEQ.ClassifySequenceRequest(inputs=_seq(("A man sleeps.", "A person rests."))),
    ),
    "seq-mixed-list-all-options": UnaryCase(
        "classify_sequence",
        (["one", ("two", "pair"), "three"],),
        {"top_k": 2, "function_to_apply": "sigmoid", "truncation": "split", "model": "bert-cls"},
        SEQ.ClassifySequenceRequest(
            inputs=_seq("one", ("two", "pair"), "three"),
            top_k=2,
            function_to_apply=SEQ.SCORE_FUNCTION_SIGMOID,
            truncation=common_pb2.TRUNCATION_POLICY_SPLIT,
            model="bert-cls",
        ),
    ),
    "seq-list-of-two-texts": UnaryCase(
        "classify_sequence",
        (["a", "b"],),
        {"top_k": 0, "function_to_apply": "SoftMax", "truncation": "reject"},
        SEQ.ClassifySequenceRequest(
            inputs=_seq("a", "b"),
            top_k=0,
            function_to_apply=SEQ.SCORE_FUNCTION_SOFTMAX,
            truncation=common_pb2.TRUNCATION_POLICY_REJECT,
        ),
    ),
    "seq-raw-logits-truncate": UnaryCase(
        "classify_sequence",
        ("x",),
        {"function_to_apply": "none", "truncation": "truncate"},
        SEQ.ClassifySequenceRequest(
            inputs=_seq("x"),
            function_to_apply=SEQ.SCORE_FUNCTION_NONE,
            truncation=common_pb2.TRUNCATION_POLICY_TRUNCATE,
        ),
    ),
    # classify_tokens
    "tok-text-defaults": UnaryCase(
        "classify_tokens",
        ("Ada lives in Paris.",),
        {},
        TOK.ClassifyTokensRequest(texts=["Ada lives in Paris."]),
    ),
    "tok-keep-every-label": UnaryCase(
        "classify_tokens",
        (["a", "b"],),
        {"aggregation": "simple", "ignore_labels": [], "model": "ner"},
        TOK.ClassifyTokensRequest(
            texts=["a", "b"],
            aggregation=TOK.AGGREGATION_STRATEGY_SIMPLE,
            ignore_labels=TOK.LabelSet(),
            model="ner",
        ),
    ),
    "tok-ignore-some-labels": UnaryCase(
        "classify_tokens",
        ("a",),
        {"aggregation": "max", "ignore_labels": ("O", "MISC")},
        TOK.ClassifyTokensRequest(
            texts=["a"],
            aggregation=TOK.AGGREGATION_STRATEGY_MAX,
            ignore_labels=TOK.LabelSet(labels=["O", "MISC"]),
        ),
    ),
    **{
        f"tok-aggregation-{name}": UnaryCase(
            "classify_tokens",
            ("a",),
            {"aggregation": name},
            TOK.ClassifyTokensRequest(texts=["a"], aggregation=value),
        )
        for name, value in [
            ("none", TOK.AGGREGATION_STRATEGY_NONE),
            ("first", TOK.AGGREGATION_STRATEGY_FIRST),
            ("average", TOK.AGGREGATION_STRATEGY_AVERAGE),
        ]
    },
    # answer_question
    "qa-question-context-defaults": UnaryCase(
        "answer_question",
        ("Who?", "Ada wrote it."),
        {},
        QA.AnswerQuestionRequest(inputs=_qc(("Who?", "Ada wrote it."))),
    ),
    "qa-one-tuple": UnaryCase(
        "answer_question", (("Who?", "Ada."),), {}, QA.AnswerQuestionRequest(inputs=_qc(("Who?", "Ada.")))
    ),
    "qa-pairs-all-options": UnaryCase(
        "answer_question",
        ([("Who?", "Ada wrote it."), ("When?", "In 1843.")],),
        {
            "top_k": 3,
            "max_answer_len": 30,
            "doc_stride": 64,
            "max_question_len": 32,
            "handle_impossible_answer": True,
            "model": "bert-qa",
        },
        QA.AnswerQuestionRequest(
            inputs=_qc(("Who?", "Ada wrote it."), ("When?", "In 1843.")),
            top_k=3,
            max_answer_len=30,
            doc_stride=64,
            max_question_len=32,
            handle_impossible_answer=True,
            model="bert-qa",
        ),
    ),
    "qa-zero-is-sent": UnaryCase(
        "answer_question",
        ("Q?", "C."),
        {"top_k": 0, "doc_stride": 0},
        QA.AnswerQuestionRequest(inputs=_qc(("Q?", "C.")), top_k=0, doc_stride=0),
    ),
    # embed
    "embed-text-defaults": UnaryCase("embed", ("hello",), {}, EMB.EmbedRequest(texts=["hello"])),
    "embed-all-options": UnaryCase(
        "embed",
        (["a", "bb"],),
        {"pooling": "cls", "normalize": True, "truncation": "split", "model": "e5"},
        EMB.EmbedRequest(
            texts=["a", "bb"],
            pooling=EMB.POOLING_CLS,
            normalize=True,
            truncation=common_pb2.TRUNCATION_POLICY_SPLIT,
            model="e5",
        ),
    ),
    "embed-mean-truncate": UnaryCase(
        "embed",
        ("a",),
        {"pooling": "mean", "truncation": "truncate"},
        EMB.EmbedRequest(
            texts=["a"], pooling=EMB.POOLING_MEAN, truncation=common_pb2.TRUNCATION_POLICY_TRUNCATE
        ),
    ),
    # tokenize
    "tokenize-text-defaults": UnaryCase(
        "tokenize", ("hello world",), {}, TKN.TokenizeRequest(texts=["hello world"])
    ),
    "tokenize-all-options": UnaryCase(
        "tokenize",
        (["a b", "c"],),
        {"skip_special_tokens": True, "model": "bert-large"},
        TKN.TokenizeRequest(texts=["a b", "c"], skip_special_tokens=True, model="bert-large"),
    ),
}


@pytest.mark.parametrize("flavour", CALLERS)
@pytest.mark.parametrize("case", UNARY_CASES.values(), ids=UNARY_CASES.keys())
def test_unary_request_and_response(
    address: str, service: FakeTaskService, case: UnaryCase, flavour: str
) -> None:
    response = CALLERS[flavour](address, case.method, *case.args, **case.kwargs)

    (request,) = service.unary_requests
    assert request == case.expected
    assert request.SerializeToString(deterministic=True) == case.expected.SerializeToString(
        deterministic=True
    )
    assert response == TASKS[case.task].respond(case.expected)


def test_optional_fields_are_unset_by_default(client: BertClient, service: FakeTaskService) -> None:
    client.classify_sequence("a")
    client.classify_tokens("a")
    client.answer_question("q", "c")
    client.embed("a")

    seq, tok, qa, emb = service.unary_requests
    assert not seq.HasField("top_k")
    assert seq.function_to_apply == SEQ.SCORE_FUNCTION_UNSPECIFIED
    assert seq.truncation == UNSPECIFIED
    assert not seq.inputs[0].HasField("text_pair")
    assert not tok.HasField("ignore_labels")  # the server's default: ["O"]
    assert tok.aggregation == TOK.AGGREGATION_STRATEGY_UNSPECIFIED
    assert not any(
        qa.HasField(name) for name in ("top_k", "max_answer_len", "doc_stride", "max_question_len")
    )
    assert not qa.handle_impossible_answer
    assert (emb.pooling, emb.normalize, emb.truncation) == (EMB.POOLING_UNSPECIFIED, False, UNSPECIFIED)
    assert [r.model for r in service.unary_requests] == ["", "", "", ""]


def test_empty_ignore_labels_is_a_present_empty_label_set(
    client: BertClient, service: FakeTaskService
) -> None:
    client.classify_tokens("a", ignore_labels=[])
    client.classify_tokens("a", ignore_labels=["O"])

    keep_all, drop_o = service.unary_requests
    assert keep_all.HasField("ignore_labels") and list(keep_all.ignore_labels.labels) == []
    assert list(drop_o.ignore_labels.labels) == ["O"]


def test_unary_errors_are_mapped(address: str) -> None:
    with pytest.raises(BertServeError) as sync_error:
        call_sync(address, "embed", "a", model=MISSING_MODEL)
    with pytest.raises(BertServeError) as async_error:
        call_async(address, "answer_question", "q", "c", model=MISSING_MODEL)

    for error in (sync_error.value, async_error.value):
        assert error.code is grpc.StatusCode.NOT_FOUND
        assert error.details == "model 'missing' is not served"


# --------------------------------------------------------------------------------------------------
# Argument errors: raised before any call.


def _assert_nothing_sent(service: FakeTaskService) -> None:
    assert service.unary_requests == [] and service.stream_requests == []


BAD_OPTIONS = {
    "function_to_apply": (
        "classify_sequence",
        ("a",),
        {"function_to_apply": "relu"},
        "'softmax', 'sigmoid', 'none'",
    ),
    "seq-truncation": ("classify_sequence", ("a",), {"truncation": "cut"}, "'reject', 'truncate', 'split'"),
    "aggregation": (
        "classify_tokens",
        ("a",),
        {"aggregation": "bogus"},
        "'none', 'simple', 'first', 'average', 'max'",
    ),
    "pooling": ("embed", ("a",), {"pooling": "max"}, "'mean', 'cls'"),
    "embed-truncation": ("embed", ("a",), {"truncation": True}, "'reject', 'truncate', 'split'"),
    "fill-mask-truncation": (
        "fill_mask",
        ("a [MASK].",),
        {"truncation": "bogus"},
        "'reject', 'truncate', 'split'",
    ),
    "next-sentence-truncation": (
        "next_sentence",
        ("a", "b"),
        {"truncation": ""},
        "'reject', 'truncate', 'split'",
    ),
}


@pytest.mark.parametrize("flavour", CALLERS)
@pytest.mark.parametrize(
    ("method", "args", "kwargs", "choices"), BAD_OPTIONS.values(), ids=BAD_OPTIONS.keys()
)
def test_unknown_option_raises_value_error_listing_choices(
    address: str,
    service: FakeTaskService,
    flavour: str,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    choices: str,
) -> None:
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=rf"^{name} must be one of {choices} or None, got {kwargs[name]!r}$"):
        CALLERS[flavour](address, method, *args, **kwargs)

    _assert_nothing_sent(service)


@pytest.mark.parametrize(
    ("method", "args", "kwargs", "choices"), BAD_OPTIONS.values(), ids=BAD_OPTIONS.keys()
)
def test_stream_helpers_check_options_when_called(
    address: str,
    service: FakeTaskService,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    choices: str,
) -> None:
    stream = f"{method}_stream"
    inputs = [args if method == "next_sentence" else args[0]]

    with BertClient(address) as client, pytest.raises(ValueError, match=choices):
        getattr(client, stream)(inputs, **kwargs)  # raises before the generator is iterated

    async def body() -> None:
        async with AsyncBertClient(address) as client:
            with pytest.raises(ValueError, match=choices):
                getattr(client, stream)(inputs, **kwargs)

    asyncio.run(body())
    _assert_nothing_sent(service)


def test_truncate_flag_still_works_and_conflicts_are_rejected() -> None:
    from bertserve_client import _messages

    def policy(**kwargs: Any) -> int:
        return _messages.fill_mask_request("a [MASK].", top_k=None, targets=(), model="", **kwargs).truncation

    assert policy(truncate=False) == UNSPECIFIED
    assert policy(truncate=True) == common_pb2.TRUNCATION_POLICY_TRUNCATE
    assert policy(truncate=True, truncation="TRUNCATE") == common_pb2.TRUNCATION_POLICY_TRUNCATE
    assert policy(truncate=False, truncation="reject") == common_pb2.TRUNCATION_POLICY_REJECT
    assert (
        policy(truncate=False, truncation="split") == common_pb2.TRUNCATION_POLICY_SPLIT
    )  # the server decides
    with pytest.raises(ValueError, match="truncate=True conflicts with truncation='reject'"):
        policy(truncate=True, truncation="reject")
    pairs = _messages.next_sentence_request([("a", "b")], model="", truncate=False, truncation="truncate")
    assert pairs.truncation == common_pb2.TRUNCATION_POLICY_TRUNCATE


@pytest.mark.parametrize("flavour", CALLERS)
def test_bad_positional_inputs_raise_type_error(address: str, service: FakeTaskService, flavour: str) -> None:
    call = CALLERS[flavour]
    with pytest.raises(TypeError, match="context"):
        call(address, "answer_question", "a question without its context")
    with pytest.raises(TypeError, match="context goes with a single question"):
        call(address, "answer_question", [("q", "c")], "extra context")
    with pytest.raises(TypeError, match=r"answer_question input #1: expected a \(question, context\) tuple"):
        call(address, "answer_question", [("q", "c"), "q2"])
    with pytest.raises(TypeError, match="classify_sequence inputs must be str or"):
        call(address, "classify_sequence", [("a", "b", "c")])
    with pytest.raises(TypeError, match="ignore_labels must be a sequence of str"):
        call(address, "classify_tokens", "a", ignore_labels="O")

    _assert_nothing_sent(service)


# --------------------------------------------------------------------------------------------------
# Streaming: one StreamResult per request, with the request's id, including error results.


@dataclass(frozen=True)
class StreamCase:
    method: str
    kwargs: dict[str, Any]
    inputs: list[Any]
    expected: dict[str, Message]  # request_id -> the request the server must receive
    bad_ids: set[str] = field(default_factory=set)

    @property
    def task(self) -> str:
        return type(next(iter(self.expected.values()))).__name__.removesuffix("Request")


SEQ_PLAIN_INPUTS: list[tuple[str, str | tuple[str, str]]] = [
    ("0", "a text"),
    ("1", ("premise", "hypothesis")),
    ("4", BAD),
]

STREAM_CASES = {
    "classify_sequence": StreamCase(
        "classify_sequence_stream",
        {"top_k": 2, "function_to_apply": "none", "truncation": "truncate", "model": "bert-cls"},
        [
            "a text",
            ("premise", "hypothesis"),
            SEQ.ClassifySequenceRequest(inputs=_seq("given")),
            ("custom", SEQ.ClassifySequenceRequest(inputs=_seq(BAD))),
            BAD,
        ],
        {
            **{
                rid: SEQ.ClassifySequenceRequest(
                    inputs=_seq(item),
                    top_k=2,
                    function_to_apply=SEQ.SCORE_FUNCTION_NONE,
                    truncation=common_pb2.TRUNCATION_POLICY_TRUNCATE,
                    model="bert-cls",
                )
                for rid, item in SEQ_PLAIN_INPUTS
            },
            "2": SEQ.ClassifySequenceRequest(inputs=_seq("given")),
            "custom": SEQ.ClassifySequenceRequest(inputs=_seq(BAD)),
        },
        {"custom", "4"},
    ),
    "classify_tokens": StreamCase(
        "classify_tokens_stream",
        {"aggregation": "first", "ignore_labels": [], "model": "ner"},
        [
            "Ada in Paris.",
            BAD,
            ("id-x", TOK.ClassifyTokensRequest(texts=["x", "y"])),
            TOK.ClassifyTokensRequest(texts=["z"]),
        ],
        {
            "0": TOK.ClassifyTokensRequest(
                texts=["Ada in Paris."],
                aggregation=TOK.AGGREGATION_STRATEGY_FIRST,
                ignore_labels=TOK.LabelSet(),
                model="ner",
            ),
            "1": TOK.ClassifyTokensRequest(
                texts=[BAD],
                aggregation=TOK.AGGREGATION_STRATEGY_FIRST,
                ignore_labels=TOK.LabelSet(),
                model="ner",
            ),
            "id-x": TOK.ClassifyTokensRequest(texts=["x", "y"]),
            "3": TOK.ClassifyTokensRequest(texts=["z"]),
        },
        {"1"},
    ),
    "answer_question": StreamCase(
        "answer_question_stream",
        {"top_k": 2, "max_answer_len": 10, "handle_impossible_answer": True},
        [("Who?", "Ada wrote it."), (BAD, "ctx"), QA.AnswerQuestionRequest(inputs=_qc(("When?", "1843")))],
        {
            "0": QA.AnswerQuestionRequest(
                inputs=_qc(("Who?", "Ada wrote it.")),
                top_k=2,
                max_answer_len=10,
                handle_impossible_answer=True,
            ),
            "1": QA.AnswerQuestionRequest(
                inputs=_qc((BAD, "ctx")), top_k=2, max_answer_len=10, handle_impossible_answer=True
            ),
            "2": QA.AnswerQuestionRequest(inputs=_qc(("When?", "1843"))),
        },
        {"1"},
    ),
    "embed": StreamCase(
        "embed_stream",
        {"pooling": "cls", "normalize": True, "truncation": "split"},
        ["one", ("mine", EMB.EmbedRequest(texts=[BAD])), "three"],
        {
            "0": EMB.EmbedRequest(
                texts=["one"],
                pooling=EMB.POOLING_CLS,
                normalize=True,
                truncation=common_pb2.TRUNCATION_POLICY_SPLIT,
            ),
            "mine": EMB.EmbedRequest(texts=[BAD]),
            "2": EMB.EmbedRequest(
                texts=["three"],
                pooling=EMB.POOLING_CLS,
                normalize=True,
                truncation=common_pb2.TRUNCATION_POLICY_SPLIT,
            ),
        },
        {"mine"},
    ),
    "tokenize": StreamCase(
        "tokenize_stream",
        {"skip_special_tokens": True},
        ["a b c", BAD, TKN.TokenizeRequest(texts=["d"], model="other")],
        {
            "0": TKN.TokenizeRequest(texts=["a b c"], skip_special_tokens=True),
            "1": TKN.TokenizeRequest(texts=[BAD], skip_special_tokens=True),
            "2": TKN.TokenizeRequest(texts=["d"], model="other"),
        },
        {"1"},
    ),
}


@pytest.mark.parametrize("flavour", STREAMERS)
@pytest.mark.parametrize("case", STREAM_CASES.values(), ids=STREAM_CASES.keys())
def test_stream_gives_one_result_per_request(
    address: str, service: FakeTaskService, case: StreamCase, flavour: str
) -> None:
    results = STREAMERS[flavour](address, case.method, case.inputs, **case.kwargs)

    ids = [result.request_id for result in results]
    assert sorted(ids) == sorted(case.expected)  # exactly one result per request
    assert len(ids) == len(case.inputs)
    received = {item.request_id: item.request for item in service.stream_requests}
    assert received == case.expected
    for result in results:
        if result.request_id in case.bad_ids:
            assert not result.ok and result.response is None
            assert result.error is not None
            assert (result.error.code, result.error.code_name) == (3, "INVALID_ARGUMENT")
        else:
            assert result.ok and result.error is None
            assert result.response == TASKS[case.task].respond(case.expected[result.request_id])


def test_stream_results_are_typed_stream_results(client: BertClient) -> None:
    results = list(client.tokenize_stream(["a", "b"]))

    assert all(isinstance(result, StreamResult) for result in results)
    assert all(isinstance(result.response, TKN.TokenizeResponse) for result in results)


@pytest.mark.parametrize(
    ("method", "bad_input", "expected"),
    [
        (
            "classify_sequence_stream",
            ("a", "b", "c"),
            "a str, a (text, text_pair) tuple, a ClassifySequenceRequest",
        ),
        (
            "classify_tokens_stream",
            ("a", "b"),
            "a str, a ClassifyTokensRequest or a (request_id, ClassifyTokensRequest)",
        ),
        ("answer_question_stream", "a question", "a (question, context) tuple, an AnswerQuestionRequest"),
        ("embed_stream", 42, "a str, an EmbedRequest"),
        ("tokenize_stream", b"bytes", "a str, a TokenizeRequest"),
        ("embed_stream", ("id", TKN.TokenizeRequest()), "a str, an EmbedRequest"),  # another task's request
    ],
)
def test_stream_rejects_inputs_of_the_wrong_type(
    client: BertClient, method: str, bad_input: Any, expected: str
) -> None:
    with pytest.raises(TypeError, match="not a single str"):
        getattr(client, method)("a text")
    with pytest.raises(TypeError, match=rf"stream input #1: expected {re.escape(expected)}"):
        list(getattr(client, method)([_valid_stream_input(method), bad_input]))


def _valid_stream_input(method: str) -> Any:
    return ("q", "c") if method == "answer_question_stream" else "text"


def test_new_names_are_exported() -> None:
    for name in (
        "AnswerQuestionInput",
        "ClassifySequenceInput",
        "ClassifyTokensInput",
        "EmbedInput",
        "TokenizeInput",
        "TruncationOption",
        "ScoreFunctionOption",
        "AggregationOption",
        "PoolingOption",
    ):
        assert name in bertserve_client.__all__
        assert hasattr(bertserve_client, name)


def test_existing_stream_helpers_still_build_the_same_requests() -> None:
    from bertserve_client import _messages

    fill = _messages.fill_mask_converter(top_k=2, targets=["x"], model="m", truncate=True)
    pair = _messages.next_sentence_converter(model="m", truncate=False)

    assert fill(3, "a [MASK].") == fill_mask_pb2.FillMaskStreamRequest(
        request_id="3",
        request=fill_mask_pb2.FillMaskRequest(
            texts=["a [MASK]."],
            top_k=2,
            targets=["x"],
            model="m",
            truncation=common_pb2.TRUNCATION_POLICY_TRUNCATE,
        ),
    )
    assert pair(0, ("a", "b")) == next_sentence_pb2.NextSentenceStreamRequest(
        request_id="0",
        request=next_sentence_pb2.NextSentenceRequest(
            pairs=[next_sentence_pb2.SentencePair(first="a", second="b")], model="m"
        ),
    )
