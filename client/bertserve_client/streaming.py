"""Public types of the streaming helpers (``fill_mask_stream`` and ``next_sentence_stream``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeAlias, TypeVar

from bertserve.v1 import common_pb2, fill_mask_pb2, next_sentence_pb2

__all__ = ["FillMaskInput", "NextSentenceInput", "StreamResult"]

R = TypeVar("R")

FillMaskInput: TypeAlias = str | fill_mask_pb2.FillMaskRequest | tuple[str, fill_mask_pb2.FillMaskRequest]
"""One stream input: a text, a request, or a ``(request_id, request)`` pair."""

NextSentenceInput: TypeAlias = (
    tuple[str, str]
    | next_sentence_pb2.NextSentenceRequest
    | tuple[str, next_sentence_pb2.NextSentenceRequest]
)
"""One stream input: a ``(first, second)`` sentence pair, a request, or a ``(request_id, request)`` pair."""


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
