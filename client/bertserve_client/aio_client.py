"""asyncio client for the bertserve gRPC API."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, overload

import grpc.aio

from bertserve.v1 import (
    answer_question_pb2,
    bert_service_pb2_grpc,
    classify_sequence_pb2,
    classify_tokens_pb2,
    embed_pb2,
    fill_mask_pb2,
    models_pb2,
    next_sentence_pb2,
    tokenize_pb2,
)
from bertserve_client import _messages, _rpc
from bertserve_client._channel import DEFAULT_TARGET, aio_channel, call_metadata, open_channel
from bertserve_client.options import AggregationOption, PoolingOption, ScoreFunctionOption, TruncationOption
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

if TYPE_CHECKING:
    from bertserve.v1.bert_service_pb2_grpc import BertServiceAsyncStub

__all__ = ["AsyncBertClient"]


class AsyncBertClient:
    """asyncio bertserve client; same arguments and methods as :class:`~bertserve_client.BertClient`.

    Create it inside a running event loop; use ``async with`` or ``await close()``. The streaming
    helpers accept an iterable or an async iterable of inputs and return an async iterator.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        token: str | None = None,
        options: Sequence[tuple[str, Any]] = (),
        channel: grpc.aio.Channel | None = None,
        retries: int = 3,
    ) -> None:
        self._channel, self._owns_channel = open_channel(
            aio_channel,
            channel,
            target=target,
            tls=tls,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            options=options,
        )
        self._settings = _rpc.CallSettings(timeout, call_metadata(metadata, token), _rpc.RetryPolicy(retries))
        self._stub: BertServiceAsyncStub = bert_service_pb2_grpc.BertServiceStub(self._channel)

    @property
    def channel(self) -> grpc.aio.Channel:
        """The underlying gRPC asyncio channel."""
        return self._channel

    async def close(self) -> None:
        """Close the channel if this client created it. Safe to call more than once."""
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> AsyncBertClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def fill_mask(
        self,
        texts: str | Sequence[str],
        *,
        top_k: int | None = None,
        targets: Sequence[str] = (),
        model: str = "",
        truncate: bool = False,
        truncation: TruncationOption | None = None,
        timeout: float | None = None,
    ) -> fill_mask_pb2.FillMaskResponse:
        """See :meth:`BertClient.fill_mask <bertserve_client.BertClient.fill_mask>`."""
        request = _messages.fill_mask_request(
            texts, top_k=top_k, targets=targets, model=model, truncate=truncate, truncation=truncation
        )
        return await _rpc.call_unary_async(self._stub.FillMask, request, self._settings, timeout)

    async def next_sentence(
        self,
        first: str,
        second: str,
        *,
        model: str = "",
        truncate: bool = False,
        truncation: TruncationOption | None = None,
        timeout: float | None = None,
    ) -> next_sentence_pb2.NextSentenceResponse:
        """Score whether ``second`` follows ``first`` (one result)."""
        return await self.next_sentence_pairs(
            [(first, second)], model=model, truncate=truncate, truncation=truncation, timeout=timeout
        )

    async def next_sentence_pairs(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        model: str = "",
        truncate: bool = False,
        truncation: TruncationOption | None = None,
        timeout: float | None = None,
    ) -> next_sentence_pb2.NextSentenceResponse:
        """Score several ``(first, second)`` pairs; one result per pair, in order."""
        request = _messages.next_sentence_request(
            pairs, model=model, truncate=truncate, truncation=truncation
        )
        return await _rpc.call_unary_async(self._stub.NextSentence, request, self._settings, timeout)

    async def classify_sequence(
        self,
        inputs: str | tuple[str, str] | Sequence[str | tuple[str, str]],
        *,
        top_k: int | None = None,
        function_to_apply: ScoreFunctionOption | None = None,
        truncation: TruncationOption | None = None,
        model: str = "",
        timeout: float | None = None,
    ) -> classify_sequence_pb2.ClassifySequenceResponse:
        """See :meth:`BertClient.classify_sequence <bertserve_client.BertClient.classify_sequence>`."""
        request = _messages.classify_sequence_request(
            inputs, top_k=top_k, function_to_apply=function_to_apply, truncation=truncation, model=model
        )
        return await _rpc.call_unary_async(self._stub.ClassifySequence, request, self._settings, timeout)

    async def classify_tokens(
        self,
        texts: str | Sequence[str],
        *,
        aggregation: AggregationOption | None = None,
        ignore_labels: Sequence[str] | None = None,
        model: str = "",
        timeout: float | None = None,
    ) -> classify_tokens_pb2.ClassifyTokensResponse:
        """See :meth:`BertClient.classify_tokens <bertserve_client.BertClient.classify_tokens>`."""
        request = _messages.classify_tokens_request(
            texts, aggregation=aggregation, ignore_labels=ignore_labels, model=model
        )
        return await _rpc.call_unary_async(self._stub.ClassifyTokens, request, self._settings, timeout)

    @overload
    async def answer_question(
        self,
        question: str,
        context: str,
        *,
        top_k: int | None = None,
        max_answer_len: int | None = None,
        doc_stride: int | None = None,
        max_question_len: int | None = None,
        handle_impossible_answer: bool = False,
        model: str = "",
        timeout: float | None = None,
    ) -> answer_question_pb2.AnswerQuestionResponse: ...

    @overload
    async def answer_question(
        self,
        question: tuple[str, str] | Sequence[tuple[str, str]],
        context: None = None,
        *,
        top_k: int | None = None,
        max_answer_len: int | None = None,
        doc_stride: int | None = None,
        max_question_len: int | None = None,
        handle_impossible_answer: bool = False,
        model: str = "",
        timeout: float | None = None,
    ) -> answer_question_pb2.AnswerQuestionResponse: ...

    async def answer_question(
        self,
        question: str | tuple[str, str] | Sequence[tuple[str, str]],
        context: str | None = None,
        *,
        top_k: int | None = None,
        max_answer_len: int | None = None,
        doc_stride: int | None = None,
        max_question_len: int | None = None,
        handle_impossible_answer: bool = False,
        model: str = "",
        timeout: float | None = None,
    ) -> answer_question_pb2.AnswerQuestionResponse:
        """See :meth:`BertClient.answer_question <bertserve_client.BertClient.answer_question>`."""
        request = _messages.answer_question_request(
            question,
            context,
            top_k=top_k,
            max_answer_len=max_answer_len,
            doc_stride=doc_stride,
            max_question_len=max_question_len,
            handle_impossible_answer=handle_impossible_answer,
            model=model,
        )
        return await _rpc.call_unary_async(self._stub.AnswerQuestion, request, self._settings, timeout)

    async def embed(
        self,
        texts: str | Sequence[str],
        *,
        pooling: PoolingOption | None = None,
        normalize: bool = False,
        truncation: TruncationOption | None = None,
        model: str = "",
        timeout: float | None = None,
    ) -> embed_pb2.EmbedResponse:
        """See :meth:`BertClient.embed <bertserve_client.BertClient.embed>`."""
        request = _messages.embed_request(
            texts, pooling=pooling, normalize=normalize, truncation=truncation, model=model
        )
        return await _rpc.call_unary_async(self._stub.Embed, request, self._settings, timeout)

    async def tokenize(
        self,
        texts: str | Sequence[str],
        *,
        skip_special_tokens: bool = False,
        model: str = "",
        timeout: float | None = None,
    ) -> tokenize_pb2.TokenizeResponse:
        """See :meth:`BertClient.tokenize <bertserve_client.BertClient.tokenize>`."""
        request = _messages.tokenize_request(texts, skip_special_tokens=skip_special_tokens, model=model)
        return await _rpc.call_unary_async(self._stub.Tokenize, request, self._settings, timeout)

    async def list_models(self, *, timeout: float | None = None) -> models_pb2.ListModelsResponse:
        """The models the server serves."""
        return await _rpc.call_unary_async(
            self._stub.ListModels, _messages.list_models_request(), self._settings, timeout
        )

    async def model_info(self, model: str = "", *, timeout: float | None = None) -> models_pb2.ModelInfo:
        """Details of one model (empty name: the server's first model)."""
        request = _messages.model_info_request(model)
        response = await _rpc.call_unary_async(self._stub.GetModelInfo, request, self._settings, timeout)
        return response.model

    def fill_mask_stream(
        self,
        inputs: Iterable[FillMaskInput] | AsyncIterable[FillMaskInput],
        *,
        top_k: int | None = None,
        targets: Sequence[str] = (),
        model: str = "",
        truncate: bool = False,
        truncation: TruncationOption | None = None,
        timeout: float | None = None,
    ) -> AsyncGenerator[StreamResult[fill_mask_pb2.FillMaskResponse], None]:
        """See :meth:`BertClient.fill_mask_stream <bertserve_client.BertClient.fill_mask_stream>`.

        A plain iterable is read on the event loop, so it must not block; ``aclose()`` on the
        returned async generator cancels the stream.
        """
        _messages.check_inputs(inputs)
        convert = _messages.fill_mask_converter(
            top_k=top_k, targets=targets, model=model, truncate=truncate, truncation=truncation
        )
        return _rpc.call_stream_async(
            self._stub.FillMaskStream, inputs, convert, _messages.stream_result, self._settings, timeout
        )

    def next_sentence_stream(
        self,
        inputs: Iterable[NextSentenceInput] | AsyncIterable[NextSentenceInput],
        *,
        model: str = "",
        truncate: bool = False,
        truncation: TruncationOption | None = None,
        timeout: float | None = None,
    ) -> AsyncGenerator[StreamResult[next_sentence_pb2.NextSentenceResponse], None]:
        """See :meth:`BertClient.next_sentence_stream <bertserve_client.BertClient.next_sentence_stream>`.

        A plain iterable is read on the event loop, so it must not block.
        """
        _messages.check_inputs(inputs)
        convert = _messages.next_sentence_converter(model=model, truncate=truncate, truncation=truncation)
        return _rpc.call_stream_async(
            self._stub.NextSentenceStream, inputs, convert, _messages.stream_result, self._settings, timeout
        )

    def classify_sequence_stream(
        self,
        inputs: Iterable[ClassifySequenceInput] | AsyncIterable[ClassifySequenceInput],
        *,
        top_k: int | None = None,
        function_to_apply: ScoreFunctionOption | None = None,
        truncation: TruncationOption | None = None,
        model: str = "",
        timeout: float | None = None,
    ) -> AsyncGenerator[StreamResult[classify_sequence_pb2.ClassifySequenceResponse], None]:
        """See :meth:`BertClient.classify_sequence_stream
        <bertserve_client.BertClient.classify_sequence_stream>`.

        A plain iterable is read on the event loop, so it must not block.
        """
        _messages.check_inputs(inputs)
        convert = _messages.classify_sequence_converter(
            top_k=top_k, function_to_apply=function_to_apply, truncation=truncation, model=model
        )
        return _rpc.call_stream_async(
            self._stub.ClassifySequenceStream,
            inputs,
            convert,
            _messages.stream_result,
            self._settings,
            timeout,
        )

    def classify_tokens_stream(
        self,
        inputs: Iterable[ClassifyTokensInput] | AsyncIterable[ClassifyTokensInput],
        *,
        aggregation: AggregationOption | None = None,
        ignore_labels: Sequence[str] | None = None,
        model: str = "",
        timeout: float | None = None,
    ) -> AsyncGenerator[StreamResult[classify_tokens_pb2.ClassifyTokensResponse], None]:
        """See :meth:`BertClient.classify_tokens_stream <bertserve_client.BertClient.classify_tokens_stream>`.

        A plain iterable is read on the event loop, so it must not block.
        """
        _messages.check_inputs(inputs)
        convert = _messages.classify_tokens_converter(
            aggregation=aggregation, ignore_labels=ignore_labels, model=model
        )
        return _rpc.call_stream_async(
            self._stub.ClassifyTokensStream, inputs, convert, _messages.stream_result, self._settings, timeout
        )

    def answer_question_stream(
        self,
        inputs: Iterable[AnswerQuestionInput] | AsyncIterable[AnswerQuestionInput],
        *,
        top_k: int | None = None,
        max_answer_len: int | None = None,
        doc_stride: int | None = None,
        max_question_len: int | None = None,
        handle_impossible_answer: bool = False,
        model: str = "",
        timeout: float | None = None,
    ) -> AsyncGenerator[StreamResult[answer_question_pb2.AnswerQuestionResponse], None]:
        """See :meth:`BertClient.answer_question_stream <bertserve_client.BertClient.answer_question_stream>`.

        A plain iterable is read on the event loop, so it must not block.
        """
        _messages.check_inputs(inputs)
        convert = _messages.answer_question_converter(
            top_k=top_k,
            max_answer_len=max_answer_len,
            doc_stride=doc_stride,
            max_question_len=max_question_len,
            handle_impossible_answer=handle_impossible_answer,
            model=model,
        )
        return _rpc.call_stream_async(
            self._stub.AnswerQuestionStream, inputs, convert, _messages.stream_result, self._settings, timeout
        )

    def embed_stream(
        self,
        inputs: Iterable[EmbedInput] | AsyncIterable[EmbedInput],
        *,
        pooling: PoolingOption | None = None,
        normalize: bool = False,
        truncation: TruncationOption | None = None,
        model: str = "",
        timeout: float | None = None,
    ) -> AsyncGenerator[StreamResult[embed_pb2.EmbedResponse], None]:
        """See :meth:`BertClient.embed_stream <bertserve_client.BertClient.embed_stream>`.

        A plain iterable is read on the event loop, so it must not block.
        """
        _messages.check_inputs(inputs)
        convert = _messages.embed_converter(
            pooling=pooling, normalize=normalize, truncation=truncation, model=model
        )
        return _rpc.call_stream_async(
            self._stub.EmbedStream, inputs, convert, _messages.stream_result, self._settings, timeout
        )

    def tokenize_stream(
        self,
        inputs: Iterable[TokenizeInput] | AsyncIterable[TokenizeInput],
        *,
        skip_special_tokens: bool = False,
        model: str = "",
        timeout: float | None = None,
    ) -> AsyncGenerator[StreamResult[tokenize_pb2.TokenizeResponse], None]:
        """See :meth:`BertClient.tokenize_stream <bertserve_client.BertClient.tokenize_stream>`.

        A plain iterable is read on the event loop, so it must not block.
        """
        _messages.check_inputs(inputs)
        convert = _messages.tokenize_converter(skip_special_tokens=skip_special_tokens, model=model)
        return _rpc.call_stream_async(
            self._stub.TokenizeStream, inputs, convert, _messages.stream_result, self._settings, timeout
        )
