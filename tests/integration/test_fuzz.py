"""Hostile and malformed input, property-based (hypothesis): every field of every RPC, unary and
streamed, and raw random or corrupted bytes sent to every method.

The server answers only OK, INVALID_ARGUMENT, FAILED_PRECONDITION, NOT_FOUND or
RESOURCE_EXHAUSTED (never UNKNOWN, INTERNAL or a timeout), never crashes and stays SERVING. Error
messages carry no stack trace, no file path and none of the request's text (each run sends a
random marker inside the texts and checks that no message contains it). The request limits
(texts per request, characters per text) are enforced for every RPC.

Four models on the fake backend (no torch), one replica each: the pre-trained tiny BERT
(FillMask, NextSentence, Embed, Tokenize), a sequence classifier, a NER model and a QA model
(64-token windows). `pytest tests/integration/test_fuzz.py -q -s` prints what was tried.
"""

from __future__ import annotations

import json
import secrets
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bertserve.v1 import (
    answer_question_pb2,
    bert_service_pb2,
    bert_service_pb2_grpc,
    classify_sequence_pb2,
    classify_tokens_pb2,
    common_pb2,
    embed_pb2,
    fill_mask_pb2,
    models_pb2,
    next_sentence_pb2,
    tokenize_pb2,
)
from tests.support.probes import clean_details
from tests.support.server import RunningServer, serving, write_config

pytestmark = pytest.mark.integration

MAX_INPUTS = 6
MAX_TEXT_CHARS = 300
MODELS = ("bert", "emotion", "ner", "squad")
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
TRUNCATE = common_pb2.TRUNCATION_POLICY_TRUNCATE
# In the texts of every example; an error message that contains it echoes request text.
MARKER = "Zq" + secrets.token_hex(4)
SERVICE = bert_service_pb2.DESCRIPTOR.services_by_name["BertService"]
FUZZ = settings(
    max_examples=50,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# What was tried, by RPC and outcome: printed at the end of the module.
TRIED: Counter[tuple[str, str]] = Counter()


@pytest.fixture(scope="module")
def fuzz_server(
    tiny_checkpoint: Path, head_checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    checkpoints = {"bert": tiny_checkpoint, **{m: head_checkpoints[m] for m in MODELS[1:]}}
    config = write_config(
        tmp_path_factory.mktemp("fuzz") / "bertserve.yaml",
        {
            "backend": "fake",
            "fake_delay_ms": 1,
            "threads_per_replica": 1,
            "ray_num_cpus": len(MODELS),
            "max_wait_ms": 1,
            "max_inputs_per_request": MAX_INPUTS,
            "max_text_chars": MAX_TEXT_CHARS,
            "admin_enabled": True,  # its ScaleModel is fuzzed too
        },
        [{"name": m, "checkpoint": str(p)} for m, p in checkpoints.items()],
    )
    with serving(["--config", str(config)], timeout=300) as running:
        yield running


@pytest.fixture(scope="module")
def channel(fuzz_server: RunningServer) -> Iterator[grpc.Channel]:
    with fuzz_server.channel() as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> Any:
    return bert_service_pb2_grpc.BertServiceStub(channel)


# ---- strategies ----------------------------------------------------------------------------
SPECIAL = (
    "\x00",
    "\x01",
    "\x1b[31m",
    "\x7f",
    "\r\n",
    "\t",
    "\u0301",  # combining acute accent
    "e\u0301\u0302\u0303\u0304",  # stacked combining marks
    "\u200b",  # zero-width space
    "\u200f",  # right-to-left mark
    "\u202e",  # right-to-left override
    "\ufeff",
    "\U0001f600",
    "\U0001f469\u200d\U0001f469\u200d\U0001f467",  # a ZWJ emoji sequence
    "\U0001f1eb\U0001f1f7",  # a flag
    "שלום עולם",
    "مرحبا بالعالم",
    "東京タワー",
    "Zürich",
    "ﷺ",
    "\U0010ffff",
    "[MASK]",
    "[SEP]",
    "[CLS]",
    "[PAD]",
    "[UNK]",
    "##ing",
    " ",
    MARKER,
)
piece = st.one_of(st.text(max_size=12), st.sampled_from(SPECIAL), st.just(MARKER))
text = st.one_of(
    st.lists(piece, max_size=10).map("".join),
    st.sampled_from(("", " ", "\x00", MARKER)),
    # around the limit on characters
    st.sampled_from((MAX_TEXT_CHARS - 1, MAX_TEXT_CHARS, MAX_TEXT_CHARS + 1)).map(
        lambda n: (MARKER + " [MASK] " + "word " * n)[:n]
    ),
)
masked = st.builds(lambda a, b: a + "[MASK]" + b, text, text)
texts = st.lists(st.one_of(text, masked), max_size=MAX_INPUTS + 2)
i32 = st.one_of(
    st.integers(-3, 130),
    st.sampled_from((-(2**31), 2**31 - 1, 0, 1, 63, 64, 65, 384, 512, 513)),
    st.integers(-(2**31), 2**31 - 1),
)
maybe_i32 = st.none() | i32
model_name = st.one_of(
    st.just(""),
    st.sampled_from(MODELS),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", max_size=20),
    st.integers(65, 20_000).map(lambda n: "m" * n),  # echoed cut short, never past the metadata limit
)
truncation = st.one_of(st.sampled_from(list(common_pb2.TruncationPolicy.values())), i32)


def _opt(**fields: Any) -> dict[str, Any]:
    """Drop the unset (None) optional fields."""
    return {k: v for k, v in fields.items() if v is not None}


fill_mask_request = st.builds(
    lambda texts, top_k, targets, model, trunc: fill_mask_pb2.FillMaskRequest(
        texts=texts, targets=targets, model=model, truncation=trunc, **_opt(top_k=top_k)
    ),
    texts,
    maybe_i32,
    st.lists(st.one_of(text, st.sampled_from(("the", "a", "[MASK]"))), max_size=4),
    model_name,
    truncation,
)
next_sentence_request = st.builds(
    lambda pairs, model, trunc: next_sentence_pb2.NextSentenceRequest(
        pairs=[next_sentence_pb2.SentencePair(first=a, second=b) for a, b in pairs],
        model=model,
        truncation=trunc,
    ),
    st.lists(st.tuples(text, text), max_size=MAX_INPUTS + 2),
    model_name,
    truncation,
)
classify_sequence_request = st.builds(
    lambda inputs, top_k, function, model, trunc: classify_sequence_pb2.ClassifySequenceRequest(
        inputs=[classify_sequence_pb2.SequenceInput(text=t, **_opt(text_pair=p)) for t, p in inputs],
        function_to_apply=function,
        model=model,
        truncation=trunc,
        **_opt(top_k=top_k),
    ),
    st.lists(st.tuples(text, st.none() | text), max_size=MAX_INPUTS + 2),
    maybe_i32,
    st.one_of(st.sampled_from(list(classify_sequence_pb2.ScoreFunction.values())), i32),
    model_name,
    truncation,
)
classify_tokens_request = st.builds(
    lambda texts, aggregation, ignore, model: classify_tokens_pb2.ClassifyTokensRequest(
        texts=texts,
        aggregation=aggregation,
        model=model,
        **_opt(ignore_labels=None if ignore is None else classify_tokens_pb2.LabelSet(labels=ignore)),
    ),
    texts,
    st.one_of(st.sampled_from(list(classify_tokens_pb2.AggregationStrategy.values())), i32),
    st.none() | st.lists(st.one_of(st.sampled_from(("O", "B-PER", "I-LOC")), text), max_size=5),
    model_name,
)
answer_question_request = st.builds(
    lambda inputs, top_k, max_len, stride, impossible, max_q, model: (
        answer_question_pb2.AnswerQuestionRequest(
            inputs=[answer_question_pb2.QuestionContext(question=q, context=c) for q, c in inputs],
            handle_impossible_answer=impossible,
            model=model,
            **_opt(top_k=top_k, max_answer_len=max_len, doc_stride=stride, max_question_len=max_q),
        )
    ),
    st.lists(st.tuples(text, text), max_size=MAX_INPUTS + 2),
    maybe_i32,
    maybe_i32,
    maybe_i32,
    st.booleans(),
    maybe_i32,
    model_name,
)
embed_request = st.builds(
    lambda texts, pooling, normalize, model, trunc: embed_pb2.EmbedRequest(
        texts=texts, pooling=pooling, normalize=normalize, model=model, truncation=trunc
    ),
    texts,
    st.one_of(st.sampled_from(list(embed_pb2.Pooling.values())), i32),
    st.booleans(),
    model_name,
    truncation,
)
tokenize_request = st.builds(
    lambda texts, skip, model: tokenize_pb2.TokenizeRequest(
        texts=texts, skip_special_tokens=skip, model=model
    ),
    texts,
    st.booleans(),
    model_name,
)
model_info_request = st.builds(lambda model: models_pb2.GetModelInfoRequest(model=model), model_name)

# Valid requests whose texts are hostile (control characters, combining marks, emoji, right-to-
# left text, special tokens): these reach tokenization, the replicas and post-processing.
hostile = (
    st.lists(piece, min_size=1, max_size=10)
    .map("".join)
    .filter(lambda t: bool(t.strip()) and len(t) <= MAX_TEXT_CHARS)
)
hostile_texts = st.lists(hostile, min_size=1, max_size=MAX_INPUTS)
valid_truncation = st.sampled_from(
    (common_pb2.TRUNCATION_POLICY_UNSPECIFIED, common_pb2.TRUNCATION_POLICY_REJECT, TRUNCATE)
)
HOSTILE: dict[str, st.SearchStrategy[Any]] = {
    "FillMask": st.builds(
        lambda texts, top_k, targets, trunc: fill_mask_pb2.FillMaskRequest(
            texts=texts, targets=targets, truncation=trunc, **_opt(top_k=top_k)
        ),
        st.lists(
            st.builds(lambda a, b: a + "[MASK]" + b, hostile | st.just(""), hostile | st.just("")),
            min_size=1,
            max_size=MAX_INPUTS,
        ),
        st.none() | st.integers(1, 10),
        st.lists(hostile | st.sampled_from(("the", "a")), max_size=3),
        valid_truncation,
    ),
    "NextSentence": st.builds(
        lambda pairs, trunc: next_sentence_pb2.NextSentenceRequest(
            pairs=[next_sentence_pb2.SentencePair(first=a, second=b) for a, b in pairs], truncation=trunc
        ),
        st.lists(st.tuples(hostile, hostile), min_size=1, max_size=MAX_INPUTS),
        valid_truncation,
    ),
    "ClassifySequence": st.builds(
        lambda inputs, top_k, function, trunc: classify_sequence_pb2.ClassifySequenceRequest(
            inputs=[classify_sequence_pb2.SequenceInput(text=t, **_opt(text_pair=p)) for t, p in inputs],
            function_to_apply=function,
            truncation=trunc,
            **_opt(top_k=top_k),
        ),
        st.lists(st.tuples(hostile, st.none() | hostile), min_size=1, max_size=MAX_INPUTS),
        st.none() | st.integers(1, 8),
        st.sampled_from(list(classify_sequence_pb2.ScoreFunction.values())),
        valid_truncation,
    ),
    "ClassifyTokens": st.builds(
        lambda texts, aggregation, ignore: classify_tokens_pb2.ClassifyTokensRequest(
            texts=texts,
            aggregation=aggregation,
            **_opt(ignore_labels=None if ignore is None else classify_tokens_pb2.LabelSet(labels=ignore)),
        ),
        hostile_texts,
        st.sampled_from(list(classify_tokens_pb2.AggregationStrategy.values())),
        st.none() | st.lists(st.sampled_from(("O", "B-PER", "I-PER", "B-LOC")), max_size=3),
    ),
    "AnswerQuestion": st.builds(
        lambda inputs, top_k, max_len, stride, impossible: answer_question_pb2.AnswerQuestionRequest(
            inputs=[answer_question_pb2.QuestionContext(question=q, context=c) for q, c in inputs],
            handle_impossible_answer=impossible,
            **_opt(top_k=top_k, max_answer_len=max_len, doc_stride=stride),
        ),
        st.lists(st.tuples(hostile, hostile), min_size=1, max_size=MAX_INPUTS),
        st.none() | st.integers(1, 5),
        st.none() | st.integers(1, 30),
        st.none() | st.integers(1, 16),
        st.booleans(),
    ),
    "Embed": st.builds(
        lambda texts, pooling, normalize, trunc: embed_pb2.EmbedRequest(
            texts=texts, pooling=pooling, normalize=normalize, truncation=trunc
        ),
        hostile_texts,
        st.sampled_from(list(embed_pb2.Pooling.values())),
        st.booleans(),
        valid_truncation | st.just(common_pb2.TRUNCATION_POLICY_SPLIT),
    ),
    "Tokenize": st.builds(
        lambda texts, skip: tokenize_pb2.TokenizeRequest(texts=texts, skip_special_tokens=skip),
        hostile_texts,
        st.booleans(),
    ),
}


# ---- checks --------------------------------------------------------------------------------
def _texts_of(message: Any) -> list[str]:
    """Every string field of a request, recursively (what must never be echoed)."""
    found: list[str] = []
    for _, value in message.ListFields():
        scalar = isinstance(value, (str, bytes, int, float)) or hasattr(value, "ListFields")
        for v in [value] if scalar else value:
            if isinstance(v, str):
                found.append(v)
            elif hasattr(v, "ListFields"):
                found.extend(_texts_of(v))
    return found


def _echoes(details: str, request: Any) -> list[str]:
    """Request text (not the model name, which may be quoted, cut short) found in `details`."""
    model = getattr(request, "model", "")
    return [t for t in _texts_of(request) if t != model and len(t.strip()) >= 12 and t in details]


def _check_error(rpc: str, code: grpc.StatusCode, details: str | None, request: Any) -> None:
    assert code in ALLOWED, f"{rpc} answered {code.name}: {details!r}"
    problems = clean_details(details, {"marker": MARKER})
    problems += [f"echoes {t[:40]!r}" for t in _echoes(details or "", request)]
    assert not problems, f"{rpc} error message {details!r}: {problems}"


def _unary(stub: Any, rpc: str, request: Any) -> None:
    try:
        getattr(stub, rpc)(request, timeout=30)
        TRIED[(rpc, "OK")] += 1
    except grpc.RpcError as exc:
        TRIED[(rpc, exc.code().name)] += 1
        _check_error(rpc, exc.code(), exc.details(), request)


def _stream(stub: Any, rpc: str, requests: list[Any], wrapper: Callable[..., Any]) -> None:
    ids = [f"req-{i}" for i in range(len(requests))]
    call = getattr(stub, f"{rpc}Stream")(
        iter([wrapper(request_id=i, request=r) for i, r in zip(ids, requests, strict=True)]), timeout=30
    )
    answered: Counter[str] = Counter()
    for reply in call:
        answered[reply.request_id] += 1
        if reply.HasField("error"):
            TRIED[(f"{rpc}Stream", reply.error.code_name)] += 1
            request = requests[ids.index(reply.request_id)]
            _check_error(rpc, grpc.StatusCode[reply.error.code_name], reply.error.message, request)
        else:
            TRIED[(f"{rpc}Stream", "OK")] += 1
    assert call.code() == grpc.StatusCode.OK
    assert answered == Counter(ids), "every stream request is answered exactly once"


# ---- hostile text in valid requests ---------------------------------------------------------
@pytest.mark.parametrize("rpc", list(HOSTILE))
def test_hostile_text_in_valid_requests(stub: Any, rpc: str) -> None:
    @settings(FUZZ, max_examples=40)
    @given(request=HOSTILE[rpc])
    def check(request: Any) -> None:
        _unary(stub, rpc, request)

    check()


# ---- every field of every RPC --------------------------------------------------------------
@FUZZ
@given(request=fill_mask_request)
def test_fill_mask_fields(stub: Any, request: fill_mask_pb2.FillMaskRequest) -> None:
    _unary(stub, "FillMask", request)


@FUZZ
@given(request=next_sentence_request)
def test_next_sentence_fields(stub: Any, request: next_sentence_pb2.NextSentenceRequest) -> None:
    _unary(stub, "NextSentence", request)


@FUZZ
@given(request=classify_sequence_request)
def test_classify_sequence_fields(stub: Any, request: classify_sequence_pb2.ClassifySequenceRequest) -> None:
    _unary(stub, "ClassifySequence", request)


@FUZZ
@given(request=classify_tokens_request)
def test_classify_tokens_fields(stub: Any, request: classify_tokens_pb2.ClassifyTokensRequest) -> None:
    _unary(stub, "ClassifyTokens", request)


@FUZZ
@given(request=answer_question_request)
def test_answer_question_fields(stub: Any, request: answer_question_pb2.AnswerQuestionRequest) -> None:
    _unary(stub, "AnswerQuestion", request)


@FUZZ
@given(request=embed_request)
def test_embed_fields(stub: Any, request: embed_pb2.EmbedRequest) -> None:
    _unary(stub, "Embed", request)


@FUZZ
@given(request=tokenize_request)
def test_tokenize_fields(stub: Any, request: tokenize_pb2.TokenizeRequest) -> None:
    _unary(stub, "Tokenize", request)


@FUZZ
@given(request=model_info_request)
def test_model_info_fields(stub: Any, request: models_pb2.GetModelInfoRequest) -> None:
    _unary(stub, "GetModelInfo", request)
    _unary(stub, "ListModels", models_pb2.ListModelsRequest())


@settings(FUZZ, max_examples=30)
@given(requests=st.lists(fill_mask_request | HOSTILE["FillMask"], min_size=1, max_size=5))
def test_fill_mask_stream_fields(stub: Any, requests: list[fill_mask_pb2.FillMaskRequest]) -> None:
    _stream(stub, "FillMask", requests, fill_mask_pb2.FillMaskStreamRequest)


@settings(FUZZ, max_examples=30)
@given(requests=st.lists(answer_question_request | HOSTILE["AnswerQuestion"], min_size=1, max_size=5))
def test_answer_question_stream_fields(
    stub: Any, requests: list[answer_question_pb2.AnswerQuestionRequest]
) -> None:
    _stream(stub, "AnswerQuestion", requests, answer_question_pb2.AnswerQuestionStreamRequest)


@settings(FUZZ, max_examples=30)
@given(requests=st.lists(classify_tokens_request | HOSTILE["ClassifyTokens"], min_size=1, max_size=5))
def test_classify_tokens_stream_fields(
    stub: Any, requests: list[classify_tokens_pb2.ClassifyTokensRequest]
) -> None:
    _stream(stub, "ClassifyTokens", requests, classify_tokens_pb2.ClassifyTokensStreamRequest)


# ---- raw bytes -----------------------------------------------------------------------------
# A valid request per method, for corrupted variants (they parse further than random bytes).
_SEEDS: dict[str, bytes] = {
    "FillMask": fill_mask_pb2.FillMaskRequest(
        texts=["A [MASK] ran."], top_k=2, targets=["dog"]
    ).SerializeToString(),
    "NextSentence": next_sentence_pb2.NextSentenceRequest(
        pairs=[next_sentence_pb2.SentencePair(first="It rained.", second="We stayed in.")]
    ).SerializeToString(),
    "ClassifySequence": classify_sequence_pb2.ClassifySequenceRequest(
        inputs=[classify_sequence_pb2.SequenceInput(text="I love it", text_pair="truly")], top_k=2
    ).SerializeToString(),
    "ClassifyTokens": classify_tokens_pb2.ClassifyTokensRequest(
        texts=["Angela visited Paris."],
        aggregation=2,
        ignore_labels=classify_tokens_pb2.LabelSet(labels=["O"]),
    ).SerializeToString(),
    "AnswerQuestion": answer_question_pb2.AnswerQuestionRequest(
        inputs=[answer_question_pb2.QuestionContext(question="Who?", context="Ann went home.")], top_k=2
    ).SerializeToString(),
    "Embed": embed_pb2.EmbedRequest(texts=["a text"], pooling=1, normalize=True).SerializeToString(),
    "Tokenize": tokenize_pb2.TokenizeRequest(texts=["Zürich"], skip_special_tokens=True).SerializeToString(),
    "ListModels": b"",
    "GetModelInfo": models_pb2.GetModelInfoRequest(model="bert").SerializeToString(),
}


def _stream_seed(rpc: str) -> bytes:
    """A stream message around the unary seed: request_id (field 1) and request (field 2)."""
    inner = _SEEDS[rpc]
    return b"\x0a\x02id" + b"\x12" + _varint(len(inner)) + inner


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


@st.composite
def corrupted(draw: st.DrawFn, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(("flip", "insert", "delete", "cut")))
        if op == "flip" and at < len(data):
            data[at] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 4))]
        else:
            del data[at:]
    return bytes(data)


def _payload(rpc: str, streaming: bool) -> st.SearchStrategy[bytes]:
    seed = _stream_seed(rpc.removesuffix("Stream")) if streaming else _SEEDS[rpc]
    return st.one_of(st.binary(max_size=300), corrupted(seed))


METHODS = [m.name for m in SERVICE.methods]


def _parses(method: str, payload: bytes) -> bool:
    """Whether the method's request message parses from these bytes (the same parser as the server)."""
    try:
        message_factory.GetMessageClass(SERVICE.methods_by_name[method].input_type).FromString(payload)
    except DecodeError:
        return False
    return True


@pytest.mark.parametrize("method", METHODS)
def test_raw_bytes_to_every_method(channel: grpc.Channel, method: str) -> None:
    """Bytes that do not parse get INVALID_ARGUMENT (a stream answers the messages before them,
    then ends so); bytes that parse are a request like any other."""
    path = f"/{SERVICE.full_name}/{method}"
    streaming = method.endswith("Stream")

    @settings(FUZZ, max_examples=25)
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        if streaming:
            messages = data.draw(st.lists(_payload(method, True), min_size=1, max_size=3))
            valid = next((i for i, m in enumerate(messages) if not _parses(method, m)), len(messages))
            call = channel.stream_stream(path, request_serializer=None, response_deserializer=None)(
                iter(messages), timeout=30
            )
            replies = []
            try:
                for reply in call:
                    replies.append(reply)
                code, details = grpc.StatusCode.OK, ""
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details()
            # One answer per message before the first malformed one, none lost.
            assert len(replies) == valid, (len(replies), valid, code, details)
        else:
            payload = data.draw(_payload(method, False))
            valid = _parses(method, payload)
            try:
                channel.unary_unary(path, request_serializer=None, response_deserializer=None)(
                    payload, timeout=30
                )
                code, details = grpc.StatusCode.OK, ""
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details()
        TRIED[(f"raw:{method}", code.name)] += 1
        assert code in ALLOWED, f"{method} answered {code.name}: {details!r}"
        assert not clean_details(details, {"marker": MARKER}), details
        if not valid or (streaming and valid < len(messages)):
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "is not a valid bertserve.v1." in details

    check()


def _other_methods() -> list[tuple[str, Any]]:
    """Every method the server registers besides BertService's: (path, its descriptor)."""
    from grpc_reflection.v1alpha import reflection_pb2

    from bertserve.server import reflection
    from bertserve.v1 import admin_pb2

    reflection._v1_messages()  # adds grpc.reflection.v1 to the default pool
    pool = reflection_pb2.DESCRIPTOR.pool
    services = [
        admin_pb2.DESCRIPTOR.services_by_name["AdminService"],
        health_pb2.DESCRIPTOR.services_by_name["Health"],
        reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
        pool.FindServiceByName(reflection.V1_SERVICE),
    ]
    return [(f"/{s.full_name}/{m.name}", m) for s in services for m in s.methods]


OTHER_METHODS = _other_methods()


@pytest.mark.parametrize(("path", "method"), OTHER_METHODS, ids=[p for p, _ in OTHER_METHODS])
def test_raw_bytes_to_every_other_registered_method(channel: grpc.Channel, path: str, method: Any) -> None:
    """AdminService, health (Check, Watch) and reflection (v1, v1alpha) answer bytes that do not
    parse with INVALID_ARGUMENT too, unary and streamed, never UNKNOWN."""
    request_class = message_factory.GetMessageClass(method.input_type)

    def parses(payload: bytes) -> bool:
        try:
            request_class.FromString(payload)
        except DecodeError:
            return False
        return True

    @settings(FUZZ, max_examples=25)
    @given(payloads=st.lists(st.binary(max_size=200), min_size=1, max_size=3))
    def check(payloads: list[bytes]) -> None:
        if not method.client_streaming:
            payloads = payloads[:1]
        if all(parses(p) for p in payloads):
            return  # a valid request: not what this test is about (it may scale or watch forever)
        if method.client_streaming:
            call: Any = channel.stream_stream(path, request_serializer=None, response_deserializer=None)(
                iter(payloads), timeout=30
            )
        elif method.server_streaming:
            call = channel.unary_stream(path, request_serializer=None, response_deserializer=None)(
                payloads[0], timeout=30
            )
        else:
            call = None
        try:
            if call is None:
                channel.unary_unary(path, request_serializer=None, response_deserializer=None)(
                    payloads[0], timeout=30
                )
            else:
                for _ in call:
                    pass
            code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
        TRIED[(f"raw:{path}", code.name)] += 1
        assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{path} answered {code.name}: {details!r}"
        assert "is not a valid message" in details and not clean_details(details), details

    check()


@settings(FUZZ, max_examples=20)
@given(name=st.integers(0, 100_000).map(lambda n: "m" * n) | st.text(min_size=1, max_size=200))
def test_unknown_model_name_of_any_length_is_not_found(stub: Any, name: str) -> None:
    """The name is quoted cut short: a long one cannot push the message past gRPC's metadata limit."""
    if name in MODELS or not name:
        return
    for rpc, request in (
        ("GetModelInfo", models_pb2.GetModelInfoRequest(model=name)),
        ("FillMask", fill_mask_pb2.FillMaskRequest(texts=["A [MASK]."], model=name)),
    ):
        with pytest.raises(grpc.RpcError) as info:
            getattr(stub, rpc)(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND, info.value.details()
        assert len(info.value.details() or "") < 300


# ---- limits --------------------------------------------------------------------------------
AT_LIMIT = ("[MASK] " + "x" * MAX_TEXT_CHARS)[:MAX_TEXT_CHARS]
OVER_LIMIT = AT_LIMIT + "x"


def _limit_requests(n: int, t: str) -> dict[str, Any]:
    """Per RPC, a request with n inputs of text t (long inputs truncated where the RPC can)."""
    return {
        "FillMask": fill_mask_pb2.FillMaskRequest(texts=[t] * n, truncation=TRUNCATE),
        "NextSentence": next_sentence_pb2.NextSentenceRequest(
            pairs=[next_sentence_pb2.SentencePair(first=t, second=t)] * n, truncation=TRUNCATE
        ),
        "ClassifySequence": classify_sequence_pb2.ClassifySequenceRequest(
            inputs=[classify_sequence_pb2.SequenceInput(text=t)] * n, truncation=TRUNCATE
        ),
        "ClassifyTokens": classify_tokens_pb2.ClassifyTokensRequest(texts=[t] * n),
        "AnswerQuestion": answer_question_pb2.AnswerQuestionRequest(
            inputs=[answer_question_pb2.QuestionContext(question=t, context=t)] * n
        ),
        "Embed": embed_pb2.EmbedRequest(texts=[t] * n, truncation=TRUNCATE),
        "Tokenize": tokenize_pb2.TokenizeRequest(texts=[t] * n),
    }


@pytest.mark.parametrize("rpc", list(_limit_requests(1, "x")))
def test_request_limits_are_enforced_for_every_rpc(stub: Any, rpc: str) -> None:
    call = getattr(stub, rpc)
    call(_limit_requests(MAX_INPUTS, AT_LIMIT)[rpc], timeout=30)  # at both limits: accepted

    with pytest.raises(grpc.RpcError) as many:
        call(_limit_requests(MAX_INPUTS + 1, "a [MASK] text")[rpc], timeout=30)
    assert many.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {MAX_INPUTS} are allowed per request" in (many.value.details() or "")

    with pytest.raises(grpc.RpcError) as long:
        call(_limit_requests(1, OVER_LIMIT)[rpc], timeout=30)
    assert long.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = long.value.details() or ""
    assert f"has {MAX_TEXT_CHARS + 1} characters; at most {MAX_TEXT_CHARS} are allowed" in details
    assert "xxxxxxxxxxxx" not in details


def test_fill_mask_target_longer_than_the_text_limit_is_rejected(stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.FillMask(
            fill_mask_pb2.FillMaskRequest(texts=["A [MASK]."], targets=["y" * (MAX_TEXT_CHARS + 1)])
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "targets[0] is too long"


# ---- afterwards ----------------------------------------------------------------------------
def test_server_survived_the_fuzzing_and_still_serves(fuzz_server: RunningServer, stub: Any) -> None:
    assert fuzz_server.process.poll() is None
    assert fuzz_server.health() == health_pb2.HealthCheckResponse.SERVING
    assert stub.FillMask(fill_mask_pb2.FillMaskRequest(texts=["A [MASK] ran."]), timeout=30).results
    log = fuzz_server.log()
    assert '"request_error"' not in log and '"stream_request_error"' not in log and "batch_error" not in log
    summary: dict[str, dict[str, int]] = {}
    for (rpc, code), n in sorted(TRIED.items()):
        summary.setdefault(rpc, {})[code] = n
    print(json.dumps({"test": "fuzz", "requests": sum(TRIED.values()), "by_rpc": summary}))
