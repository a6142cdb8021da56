"""Request building and result conversion shared by the sync and asyncio clients.

Every option is checked while the request is built, so a bad argument raises before any call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal, Protocol, TypeAlias, TypeGuard, TypeVar

import grpc
from google.protobuf.message import Message

from bertserve.v1 import (
    answer_question_pb2,
    classify_sequence_pb2,
    classify_tokens_pb2,
    common_pb2,
    embed_pb2,
    fill_mask_pb2,
    models_pb2,
    next_sentence_pb2,
    tokenize_pb2,
)
from bertserve_client.streaming import (
    AnswerQuestionInput,
    ClassifySequenceInput,
    ClassifyTokensInput,
    EmbedInput,
    FillMaskInput,
    NextSentenceInput,
    StreamResult,
    TokenizeInput,
)

R_co = TypeVar("R_co", covariant=True)
Req_contra = TypeVar("Req_contra", contravariant=True)
StreamReq_co = TypeVar("StreamReq_co", covariant=True)
In = TypeVar("In")
Req = TypeVar("Req")
StreamReq = TypeVar("StreamReq")
T = TypeVar("T")
E = TypeVar("E", bound=int)
M = TypeVar("M", bound=Message)

Converter = Callable[[int, In], Req]
"""Turns the stream input at an index into a stream request message."""

SequenceInputs: TypeAlias = str | tuple[str, str] | Sequence[str | tuple[str, str]]
"""What ``classify_sequence`` takes: a text, a ``(text, text_pair)`` tuple, or a sequence of those."""

QuestionInputs: TypeAlias = str | tuple[str, str] | Sequence[tuple[str, str]]
"""What ``answer_question`` takes first: a question (with ``context``), or ``(question, context)`` pairs."""

TRUNCATION_POLICIES: Mapping[str, common_pb2.TruncationPolicy.ValueType] = {
    "reject": common_pb2.TRUNCATION_POLICY_REJECT,
    "truncate": common_pb2.TRUNCATION_POLICY_TRUNCATE,
    "split": common_pb2.TRUNCATION_POLICY_SPLIT,
}
SCORE_FUNCTIONS: Mapping[str, classify_sequence_pb2.ScoreFunction.ValueType] = {
    "softmax": classify_sequence_pb2.SCORE_FUNCTION_SOFTMAX,
    "sigmoid": classify_sequence_pb2.SCORE_FUNCTION_SIGMOID,
    "none": classify_sequence_pb2.SCORE_FUNCTION_NONE,
}
AGGREGATION_STRATEGIES: Mapping[str, classify_tokens_pb2.AggregationStrategy.ValueType] = {
    "none": classify_tokens_pb2.AGGREGATION_STRATEGY_NONE,
    "simple": classify_tokens_pb2.AGGREGATION_STRATEGY_SIMPLE,
    "first": classify_tokens_pb2.AGGREGATION_STRATEGY_FIRST,
    "average": classify_tokens_pb2.AGGREGATION_STRATEGY_AVERAGE,
    "max": classify_tokens_pb2.AGGREGATION_STRATEGY_MAX,
}
POOLINGS: Mapping[str, embed_pb2.Pooling.ValueType] = {
    "mean": embed_pb2.POOLING_MEAN,
    "cls": embed_pb2.POOLING_CLS,
}


def option(name: str, value: str | None, choices: Mapping[str, E], unset: E) -> E:
    """The enum value a string option names (case-insensitive); None is ``unset``.

    Anything else raises ValueError listing the choices.
    """
    if value is None:
        return unset
    if isinstance(value, str):
        found = choices.get(value.lower())
        if found is not None:
            return found
    listed = ", ".join(repr(choice) for choice in choices)
    raise ValueError(f"{name} must be one of {listed} or None, got {value!r}")


def truncation_policy(
    truncation: str | None, *, truncate: bool = False
) -> common_pb2.TruncationPolicy.ValueType:
    """The TruncationPolicy of a ``truncation`` name; None is UNSPECIFIED (the server's default: reject).

    ``truncate=True`` (the older boolean form) means ``"truncate"``; it conflicts with any other name.
    """
    policy = option("truncation", truncation, TRUNCATION_POLICIES, common_pb2.TRUNCATION_POLICY_UNSPECIFIED)
    if not truncate:
        return policy
    if truncation is not None and policy != common_pb2.TRUNCATION_POLICY_TRUNCATE:
        raise ValueError(f"truncate=True conflicts with truncation={truncation!r}")
    return common_pb2.TRUNCATION_POLICY_TRUNCATE


def fill_mask_request(
    texts: str | Sequence[str],
    *,
    top_k: int | None,
    targets: Sequence[str],
    model: str,
    truncate: bool,
    truncation: str | None = None,
) -> fill_mask_pb2.FillMaskRequest:
    """A FillMaskRequest; a single ``str`` is one text, ``top_k=None`` leaves the field unset."""
    request = fill_mask_pb2.FillMaskRequest(
        texts=_texts(texts),
        targets=_strings(targets, "targets"),
        model=model,
        truncation=truncation_policy(truncation, truncate=truncate),
    )
    if top_k is not None:
        request.top_k = top_k
    return request


def next_sentence_request(
    pairs: Sequence[tuple[str, str]], *, model: str, truncate: bool, truncation: str | None = None
) -> next_sentence_pb2.NextSentenceRequest:
    """A NextSentenceRequest with one SentencePair per ``(first, second)`` tuple."""
    return next_sentence_pb2.NextSentenceRequest(
        pairs=[next_sentence_pb2.SentencePair(first=first, second=second) for first, second in pairs],
        model=model,
        truncation=truncation_policy(truncation, truncate=truncate),
    )


def classify_sequence_request(
    inputs: SequenceInputs,
    *,
    top_k: int | None,
    function_to_apply: str | None,
    truncation: str | None,
    model: str,
) -> classify_sequence_pb2.ClassifySequenceRequest:
    """A ClassifySequenceRequest; a single ``str`` or ``(text, text_pair)`` tuple is one input."""
    request = classify_sequence_pb2.ClassifySequenceRequest(
        inputs=[_sequence_input(item) for item in _sequence_items(inputs)],
        function_to_apply=option(
            "function_to_apply",
            function_to_apply,
            SCORE_FUNCTIONS,
            classify_sequence_pb2.SCORE_FUNCTION_UNSPECIFIED,
        ),
        model=model,
        truncation=truncation_policy(truncation),
    )
    if top_k is not None:
        request.top_k = top_k
    return request


def classify_tokens_request(
    texts: str | Sequence[str],
    *,
    aggregation: str | None,
    ignore_labels: Sequence[str] | None,
    model: str,
) -> classify_tokens_pb2.ClassifyTokensRequest:
    """A ClassifyTokensRequest; ``ignore_labels=None`` leaves the field unset (the server's ["O"])."""
    request = classify_tokens_pb2.ClassifyTokensRequest(
        texts=_texts(texts),
        aggregation=option(
            "aggregation",
            aggregation,
            AGGREGATION_STRATEGIES,
            classify_tokens_pb2.AGGREGATION_STRATEGY_UNSPECIFIED,
        ),
        model=model,
    )
    if ignore_labels is not None:
        request.ignore_labels.SetInParent()  # present even when empty: ignore nothing
        request.ignore_labels.labels.extend(_strings(ignore_labels, "ignore_labels"))
    return request


def answer_question_request(
    question: QuestionInputs,
    context: str | None,
    *,
    top_k: int | None,
    max_answer_len: int | None,
    doc_stride: int | None,
    max_question_len: int | None,
    handle_impossible_answer: bool,
    model: str,
) -> answer_question_pb2.AnswerQuestionRequest:
    """An AnswerQuestionRequest from ``(question, context)`` or a sequence of such pairs.

    Each integer option left at None leaves its field unset (the server's default).
    """
    request = answer_question_pb2.AnswerQuestionRequest(
        inputs=[
            answer_question_pb2.QuestionContext(question=q, context=c)
            for q, c in _question_pairs(question, context)
        ],
        handle_impossible_answer=handle_impossible_answer,
        model=model,
    )
    if top_k is not None:
        request.top_k = top_k
    if max_answer_len is not None:
        request.max_answer_len = max_answer_len
    if doc_stride is not None:
        request.doc_stride = doc_stride
    if max_question_len is not None:
        request.max_question_len = max_question_len
    return request


def embed_request(
    texts: str | Sequence[str],
    *,
    pooling: str | None,
    normalize: bool,
    truncation: str | None,
    model: str,
) -> embed_pb2.EmbedRequest:
    """An EmbedRequest; a single ``str`` is one text."""
    return embed_pb2.EmbedRequest(
        texts=_texts(texts),
        pooling=option("pooling", pooling, POOLINGS, embed_pb2.POOLING_UNSPECIFIED),
        normalize=normalize,
        model=model,
        truncation=truncation_policy(truncation),
    )


def tokenize_request(
    texts: str | Sequence[str], *, skip_special_tokens: bool, model: str
) -> tokenize_pb2.TokenizeRequest:
    """A TokenizeRequest; a single ``str`` is one text."""
    return tokenize_pb2.TokenizeRequest(
        texts=_texts(texts), skip_special_tokens=skip_special_tokens, model=model
    )


def list_models_request() -> models_pb2.ListModelsRequest:
    return models_pb2.ListModelsRequest()


def model_info_request(model: str) -> models_pb2.GetModelInfoRequest:
    return models_pb2.GetModelInfoRequest(model=model)


# --------------------------------------------------------------------------------------------------
# Stream input converters. Each builds a template request from the keyword arguments up front (so a
# bad option raises when the helper is called) and copies it for every plain input.


class StreamRequestFactory(Protocol[Req_contra, StreamReq_co]):
    """A ``*StreamRequest`` message class: ``request_id`` plus the task's request."""

    def __call__(self, *, request_id: str, request: Req_contra) -> StreamReq_co: ...


def stream_converter(
    stream_request: StreamRequestFactory[Req, StreamReq],
    request_type: type[Req],
    plain: Callable[[In], Req | None],
    plain_forms: str,
) -> Converter[In, StreamReq]:
    """Converter for a task's stream inputs.

    A ``request_type`` message is sent as is and a ``(request_id, request)`` tuple keeps its id; any
    other input goes to ``plain``, which builds a request or returns None for an input it does not
    take (``plain_forms`` describes those it takes, for the TypeError). Requests without an id get the
    input's index.
    """
    name = request_type.__name__
    article = "an" if name[0] in "AEIOU" else "a"
    expected = f"{plain_forms}, {article} {name} or a (request_id, {name}) tuple"

    def convert(index: int, item: In) -> StreamReq:
        if isinstance(item, request_type):
            return stream_request(request_id=str(index), request=item)
        if _is_pair(item, request_type):
            return stream_request(request_id=item[0], request=item[1])
        request = plain(item)
        if request is None:
            raise _bad_input(index, item, expected)
        return stream_request(request_id=str(index), request=request)

    return convert


def fill_mask_converter(
    *, top_k: int | None, targets: Sequence[str], model: str, truncate: bool, truncation: str | None = None
) -> Converter[FillMaskInput, fill_mask_pb2.FillMaskStreamRequest]:
    """Converter for ``fill_mask_stream`` inputs; the keyword arguments apply to text inputs only."""
    template = fill_mask_request(
        [], top_k=top_k, targets=targets, model=model, truncate=truncate, truncation=truncation
    )

    def plain(item: FillMaskInput) -> fill_mask_pb2.FillMaskRequest | None:
        if not isinstance(item, str):
            return None
        request = _copy(template)
        request.texts.append(item)
        return request

    return stream_converter(
        fill_mask_pb2.FillMaskStreamRequest, fill_mask_pb2.FillMaskRequest, plain, "a str"
    )


def next_sentence_converter(
    *, model: str, truncate: bool, truncation: str | None = None
) -> Converter[NextSentenceInput, next_sentence_pb2.NextSentenceStreamRequest]:
    """Converter for ``next_sentence_stream`` inputs; the keyword arguments apply to pair inputs only."""
    template = next_sentence_request([], model=model, truncate=truncate, truncation=truncation)

    def plain(item: NextSentenceInput) -> next_sentence_pb2.NextSentenceRequest | None:
        if not _is_pair(item, str):
            return None
        request = _copy(template)
        request.pairs.add(first=item[0], second=item[1])
        return request

    return stream_converter(
        next_sentence_pb2.NextSentenceStreamRequest,
        next_sentence_pb2.NextSentenceRequest,
        plain,
        "a (first, second) tuple",
    )


def classify_sequence_converter(
    *, top_k: int | None, function_to_apply: str | None, truncation: str | None, model: str
) -> Converter[ClassifySequenceInput, classify_sequence_pb2.ClassifySequenceStreamRequest]:
    """Converter for ``classify_sequence_stream``: a text or a ``(text, text_pair)`` tuple is one input."""
    template = classify_sequence_request(
        [], top_k=top_k, function_to_apply=function_to_apply, truncation=truncation, model=model
    )

    def plain(item: ClassifySequenceInput) -> classify_sequence_pb2.ClassifySequenceRequest | None:
        if not isinstance(item, str) and not _is_pair(item, str):
            return None
        request = _copy(template)
        request.inputs.append(_sequence_input(item))
        return request

    return stream_converter(
        classify_sequence_pb2.ClassifySequenceStreamRequest,
        classify_sequence_pb2.ClassifySequenceRequest,
        plain,
        "a str, a (text, text_pair) tuple",
    )


def classify_tokens_converter(
    *, aggregation: str | None, ignore_labels: Sequence[str] | None, model: str
) -> Converter[ClassifyTokensInput, classify_tokens_pb2.ClassifyTokensStreamRequest]:
    """Converter for ``classify_tokens_stream``: a text is a one-text request."""
    template = classify_tokens_request([], aggregation=aggregation, ignore_labels=ignore_labels, model=model)

    def plain(item: ClassifyTokensInput) -> classify_tokens_pb2.ClassifyTokensRequest | None:
        if not isinstance(item, str):
            return None
        request = _copy(template)
        request.texts.append(item)
        return request

    return stream_converter(
        classify_tokens_pb2.ClassifyTokensStreamRequest,
        classify_tokens_pb2.ClassifyTokensRequest,
        plain,
        "a str",
    )


def answer_question_converter(
    *,
    top_k: int | None,
    max_answer_len: int | None,
    doc_stride: int | None,
    max_question_len: int | None,
    handle_impossible_answer: bool,
    model: str,
) -> Converter[AnswerQuestionInput, answer_question_pb2.AnswerQuestionStreamRequest]:
    """Converter for ``answer_question_stream``: a ``(question, context)`` tuple is one input."""
    template = answer_question_request(
        [],
        None,
        top_k=top_k,
        max_answer_len=max_answer_len,
        doc_stride=doc_stride,
        max_question_len=max_question_len,
        handle_impossible_answer=handle_impossible_answer,
        model=model,
    )

    def plain(item: AnswerQuestionInput) -> answer_question_pb2.AnswerQuestionRequest | None:
        if not _is_pair(item, str):
            return None
        request = _copy(template)
        request.inputs.add(question=item[0], context=item[1])
        return request

    return stream_converter(
        answer_question_pb2.AnswerQuestionStreamRequest,
        answer_question_pb2.AnswerQuestionRequest,
        plain,
        "a (question, context) tuple",
    )


def embed_converter(
    *, pooling: str | None, normalize: bool, truncation: str | None, model: str
) -> Converter[EmbedInput, embed_pb2.EmbedStreamRequest]:
    """Converter for ``embed_stream``: a text is a one-text request."""
    template = embed_request([], pooling=pooling, normalize=normalize, truncation=truncation, model=model)

    def plain(item: EmbedInput) -> embed_pb2.EmbedRequest | None:
        if not isinstance(item, str):
            return None
        request = _copy(template)
        request.texts.append(item)
        return request

    return stream_converter(embed_pb2.EmbedStreamRequest, embed_pb2.EmbedRequest, plain, "a str")


def tokenize_converter(
    *, skip_special_tokens: bool, model: str
) -> Converter[TokenizeInput, tokenize_pb2.TokenizeStreamRequest]:
    """Converter for ``tokenize_stream``: a text is a one-text request."""
    template = tokenize_request([], skip_special_tokens=skip_special_tokens, model=model)

    def plain(item: TokenizeInput) -> tokenize_pb2.TokenizeRequest | None:
        if not isinstance(item, str):
            return None
        request = _copy(template)
        request.texts.append(item)
        return request

    return stream_converter(tokenize_pb2.TokenizeStreamRequest, tokenize_pb2.TokenizeRequest, plain, "a str")


class StreamResponse(Protocol[R_co]):
    """What every ``*StreamResponse`` message has: a request_id and a response-or-error outcome."""

    @property
    def request_id(self) -> str: ...
    @property
    def response(self) -> R_co: ...
    @property
    def error(self) -> common_pb2.Error: ...
    def WhichOneof(self, oneof_group: Literal["outcome"]) -> Literal["response", "error"] | None: ...


def stream_result(message: StreamResponse[R_co]) -> StreamResult[R_co]:
    """Convert a stream response message; a message with neither outcome becomes an UNKNOWN error."""
    outcome = message.WhichOneof("outcome")
    if outcome == "response":
        return StreamResult(message.request_id, response=message.response)
    if outcome == "error":
        return StreamResult(message.request_id, error=message.error)
    unknown = grpc.StatusCode.UNKNOWN
    error = common_pb2.Error(
        code=unknown.value[0],
        code_name=unknown.name,
        message="the server sent neither a response nor an error",
    )
    return StreamResult(message.request_id, error=error)


def check_inputs(inputs: object) -> None:
    """Reject a single str passed where an iterable of stream inputs is expected."""
    if isinstance(inputs, (str, bytes)):
        raise TypeError("inputs must be an iterable of stream inputs, not a single str")


def _texts(texts: str | Sequence[str]) -> list[str]:
    return [texts] if isinstance(texts, str) else list(texts)


def _strings(values: Sequence[str], name: str) -> list[str]:
    if isinstance(values, str):
        raise TypeError(f"{name} must be a sequence of str, not a single str")
    return list(values)


def _sequence_items(inputs: SequenceInputs) -> list[str | tuple[str, str]]:
    """A single text or ``(text, text_pair)`` tuple as one item, any other sequence item by item."""
    if isinstance(inputs, str) or _is_pair(inputs, str):
        return [inputs]
    return list(inputs)


def _sequence_input(item: object) -> classify_sequence_pb2.SequenceInput:
    if isinstance(item, str):
        return classify_sequence_pb2.SequenceInput(text=item)
    if _is_pair(item, str):
        return classify_sequence_pb2.SequenceInput(text=item[0], text_pair=item[1])
    raise TypeError(
        f"classify_sequence inputs must be str or (text, text_pair) tuples, got {type(item).__name__}"
    )


def _question_pairs(question: QuestionInputs, context: str | None) -> list[tuple[str, str]]:
    if isinstance(question, str):
        if context is None:
            raise TypeError("a single question needs its context: answer_question(question, context)")
        return [(question, context)]
    if context is not None:
        raise TypeError("context goes with a single question str, not with (question, context) pairs")
    if _is_pair(question, str):
        return [question]
    pairs: list[tuple[str, str]] = []
    for index, pair in enumerate(question):
        if not _is_pair(pair, str):
            got = type(pair).__name__
            raise TypeError(
                f"answer_question input #{index}: expected a (question, context) tuple, got {got}"
            )
        pairs.append(pair)
    return pairs


def _copy(template: M) -> M:
    message = type(template)()
    message.CopyFrom(template)
    return message


def _is_pair(item: object, second_type: type[T]) -> TypeGuard[tuple[str, T]]:
    return (
        isinstance(item, tuple)
        and len(item) == 2
        and isinstance(item[0], str)
        and isinstance(item[1], second_type)
    )


def _bad_input(index: int, item: object, expected: str) -> TypeError:
    return TypeError(f"stream input #{index}: expected {expected}, got {type(item).__name__}")
