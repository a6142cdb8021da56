"""Request building and result conversion shared by the sync and asyncio clients."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Protocol, TypeGuard, TypeVar

import grpc

from bertserve.v1 import common_pb2, fill_mask_pb2, models_pb2, next_sentence_pb2
from bertserve_client.streaming import FillMaskInput, NextSentenceInput, StreamResult

R_co = TypeVar("R_co", covariant=True)
In = TypeVar("In")
Req = TypeVar("Req")
T = TypeVar("T")

Converter = Callable[[int, In], Req]
"""Turns the stream input at an index into a stream request message."""


def truncation(truncate: bool) -> common_pb2.TruncationPolicy.ValueType:
    """TRUNCATE when asked, else UNSPECIFIED (the server's default: reject long inputs)."""
    if truncate:
        return common_pb2.TRUNCATION_POLICY_TRUNCATE
    return common_pb2.TRUNCATION_POLICY_UNSPECIFIED


def fill_mask_request(
    texts: str | Sequence[str],
    *,
    top_k: int | None,
    targets: Sequence[str],
    model: str,
    truncate: bool,
) -> fill_mask_pb2.FillMaskRequest:
    """A FillMaskRequest; a single ``str`` is one text, ``top_k=None`` leaves the field unset."""
    request = fill_mask_pb2.FillMaskRequest(
        texts=[texts] if isinstance(texts, str) else list(texts),
        targets=_strings(targets, "targets"),
        model=model,
        truncation=truncation(truncate),
    )
    if top_k is not None:
        request.top_k = top_k
    return request


def next_sentence_request(
    pairs: Sequence[tuple[str, str]], *, model: str, truncate: bool
) -> next_sentence_pb2.NextSentenceRequest:
    """A NextSentenceRequest with one SentencePair per ``(first, second)`` tuple."""
    return next_sentence_pb2.NextSentenceRequest(
        pairs=[next_sentence_pb2.SentencePair(first=first, second=second) for first, second in pairs],
        model=model,
        truncation=truncation(truncate),
    )


def list_models_request() -> models_pb2.ListModelsRequest:
    return models_pb2.ListModelsRequest()


def model_info_request(model: str) -> models_pb2.GetModelInfoRequest:
    return models_pb2.GetModelInfoRequest(model=model)


def fill_mask_converter(
    *, top_k: int | None, targets: Sequence[str], model: str, truncate: bool
) -> Converter[FillMaskInput, fill_mask_pb2.FillMaskStreamRequest]:
    """Converter for ``fill_mask_stream`` inputs; the keyword arguments apply to text inputs only."""
    targets = _strings(targets, "targets")

    def convert(index: int, item: FillMaskInput) -> fill_mask_pb2.FillMaskStreamRequest:
        if isinstance(item, str):
            request = fill_mask_request(item, top_k=top_k, targets=targets, model=model, truncate=truncate)
            return fill_mask_pb2.FillMaskStreamRequest(request_id=str(index), request=request)
        if isinstance(item, fill_mask_pb2.FillMaskRequest):
            return fill_mask_pb2.FillMaskStreamRequest(request_id=str(index), request=item)
        if _is_id_pair(item, fill_mask_pb2.FillMaskRequest):
            return fill_mask_pb2.FillMaskStreamRequest(request_id=item[0], request=item[1])
        raise _bad_input(index, item, "a str, a FillMaskRequest or a (request_id, FillMaskRequest) tuple")

    return convert


def next_sentence_converter(
    *, model: str, truncate: bool
) -> Converter[NextSentenceInput, next_sentence_pb2.NextSentenceStreamRequest]:
    """Converter for ``next_sentence_stream`` inputs; the keyword arguments apply to pair inputs only."""

    def convert(index: int, item: NextSentenceInput) -> next_sentence_pb2.NextSentenceStreamRequest:
        if isinstance(item, next_sentence_pb2.NextSentenceRequest):
            return next_sentence_pb2.NextSentenceStreamRequest(request_id=str(index), request=item)
        if _is_id_pair(item, next_sentence_pb2.NextSentenceRequest):
            return next_sentence_pb2.NextSentenceStreamRequest(request_id=item[0], request=item[1])
        if _is_id_pair(item, str):
            request = next_sentence_request([item], model=model, truncate=truncate)
            return next_sentence_pb2.NextSentenceStreamRequest(request_id=str(index), request=request)
        raise _bad_input(
            index,
            item,
            "a (first, second) tuple, a NextSentenceRequest or a (request_id, NextSentenceRequest) tuple",
        )

    return convert


class StreamResponse(Protocol[R_co]):
    """What FillMaskStreamResponse and NextSentenceStreamResponse have in common."""

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


def _strings(values: Sequence[str], name: str) -> list[str]:
    if isinstance(values, str):
        raise TypeError(f"{name} must be a sequence of str, not a single str")
    return list(values)


def _is_id_pair(item: object, second_type: type[T]) -> TypeGuard[tuple[str, T]]:
    return (
        isinstance(item, tuple)
        and len(item) == 2
        and isinstance(item[0], str)
        and isinstance(item[1], second_type)
    )


def _bad_input(index: int, item: object, expected: str) -> TypeError:
    return TypeError(f"stream input #{index}: expected {expected}, got {type(item).__name__}")
