"""Public types of the streaming helpers (``fill_mask_stream``, ``classify_sequence_stream``, ...).

Every helper accepts, as one stream input, a prepared request message of its task (sent as is, with
the input's index as ``request_id``), a ``(request_id, request)`` tuple (sent with that id), or the
task's plain form below (built into a one-input request from the helper's keyword arguments).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeAlias, TypeVar

from bertserve.v1 import (
    answer_question_pb2,
    classify_sequence_pb2,
    classify_tokens_pb2,
    common_pb2,
    embed_pb2,
    fill_mask_pb2,
    next_sentence_pb2,
    tokenize_pb2,
)

__all__ = [
    "AnswerQuestionInput",
    "ClassifySequenceInput",
    "ClassifyTokensInput",
    "EmbedInput",
    "FillMaskInput",
    "NextSentenceInput",
    "StreamResult",
    "TokenizeInput",
]

R = TypeVar("R")

FillMaskInput: TypeAlias = str | fill_mask_pb2.FillMaskRequest | tuple[str, fill_mask_pb2.FillMaskRequest]
"""One stream input: a text, a request, or a ``(request_id, request)`` pair."""

NextSentenceInput: TypeAlias = (
    tuple[str, str]
    | next_sentence_pb2.NextSentenceRequest
    | tuple[str, next_sentence_pb2.NextSentenceRequest]
)
"""One stream input: a ``(first, second)`` sentence pair, a request, or a ``(request_id, request)`` pair."""

ClassifySequenceInput: TypeAlias = (
    str
    | tuple[str, str]
    | classify_sequence_pb2.ClassifySequenceRequest
    | tuple[str, classify_sequence_pb2.ClassifySequenceRequest]
)
"""One stream input: a text, a ``(text, text_pair)`` pair, a request, or a ``(request_id, request)`` pair."""

ClassifyTokensInput: TypeAlias = (
    str | classify_tokens_pb2.ClassifyTokensRequest | tuple[str, classify_tokens_pb2.ClassifyTokensRequest]
)
"""One stream input: a text, a request, or a ``(request_id, request)`` pair."""

AnswerQuestionInput: TypeAlias = (
    tuple[str, str]
    | answer_question_pb2.AnswerQuestionRequest
    | tuple[str, answer_question_pb2.AnswerQuestionRequest]
)
"""One stream input: a ``(question, context)`` pair, a request, or a ``(request_id, request)`` pair."""

EmbedInput: TypeAlias = str | embed_pb2.EmbedRequest | tuple[str, embed_pb2.EmbedRequest]
"""One stream input: a text, a request, or a ``(request_id, request)`` pair."""

TokenizeInput: TypeAlias = str | tokenize_pb2.TokenizeRequest | tuple[str, tokenize_pb2.TokenizeRequest]
"""One stream input: a text, a request, or a ``(request_id, request)`` pair."""


@dataclass(frozen=True, slots=True)
class StreamResult(Generic[R]):
    """The outcome of one request sent on a stream.

    Exactly one of ``response`` and ``error`` is set. ``request_id`` is the id the request was sent
    with: the input's index (as a string) for plain inputs, or the id given in a
    ``(request_id, request)`` tuple.
    """

    request_id: str
    response: R | None = None
    error: common_pb2.Error | None = None

    @property
    def ok(self) -> bool:
        """True when the request succeeded (``response`` is set)."""
        return self.error is None
