"""asyncio client for the bertserve gRPC API."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import grpc.aio

from bertserve.v1 import bert_service_pb2_grpc, fill_mask_pb2, models_pb2, next_sentence_pb2
from bertserve_client import _messages, _rpc
from bertserve_client._channel import DEFAULT_TARGET, aio_channel, open_channel
from bertserve_client.streaming import FillMaskInput, NextSentenceInput, StreamResult

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
        options: Sequence[tuple[str, Any]] = (),
        channel: grpc.aio.Channel | None = None,
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
        self._settings = _rpc.CallSettings(timeout, tuple(metadata))
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
        timeout: float | None = None,
    ) -> fill_mask_pb2.FillMaskResponse:
        """See :meth:`BertClient.fill_mask <bertserve_client.BertClient.fill_mask>`."""
        request = _messages.fill_mask_request(
            texts, top_k=top_k, targets=targets, model=model, truncate=truncate
        )
        return await _rpc.call_unary_async(self._stub.FillMask, request, self._settings, timeout)

    async def next_sentence(
        self,
        first: str,
        second: str,
        *,
        model: str = "",
        truncate: bool = False,
        timeout: float | None = None,
    ) -> next_sentence_pb2.NextSentenceResponse:
        """Score whether ``second`` follows ``first`` (one result)."""
        return await self.next_sentence_pairs(
            [(first, second)], model=model, truncate=truncate, timeout=timeout
        )

    async def next_sentence_pairs(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        model: str = "",
        truncate: bool = False,
        timeout: float | None = None,
    ) -> next_sentence_pb2.NextSentenceResponse:
        """Score several ``(first, second)`` pairs; one result per pair, in order."""
        request = _messages.next_sentence_request(pairs, model=model, truncate=truncate)
        return await _rpc.call_unary_async(self._stub.NextSentence, request, self._settings, timeout)

    async def list_models(self, *, timeout: float | None = None) -> models_pb2.ListModelsResponse:
        """The models the server serves."""
        return await _rpc.call_unary_async(
            self._stub.ListModels, _messages.list_models_request(), self._settings, timeout
        )

    async def model_info(self, model: str = "", *, timeout: float | None = None) -> models_pb2.ModelInfo:
        """Details of one model (empty name: the default model)."""
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
        timeout: float | None = None,
    ) -> AsyncGenerator[StreamResult[fill_mask_pb2.FillMaskResponse], None]:
        """See :meth:`BertClient.fill_mask_stream <bertserve_client.BertClient.fill_mask_stream>`.

        A plain iterable is read on the event loop, so it must not block; ``aclose()`` on the
        returned async generator cancels the stream.
        """
        _messages.check_inputs(inputs)
        convert = _messages.fill_mask_converter(top_k=top_k, targets=targets, model=model, truncate=truncate)
        return _rpc.call_stream_async(
            self._stub.FillMaskStream, inputs, convert, _messages.stream_result, self._settings, timeout
        )

    def next_sentence_stream(
        self,
        inputs: Iterable[NextSentenceInput] | AsyncIterable[NextSentenceInput],
        *,
        model: str = "",
        truncate: bool = False,
        timeout: float | None = None,
    ) -> AsyncGenerator[StreamResult[next_sentence_pb2.NextSentenceResponse], None]:
        """See :meth:`BertClient.next_sentence_stream <bertserve_client.BertClient.next_sentence_stream>`.

        A plain iterable is read on the event loop, so it must not block.
        """
        _messages.check_inputs(inputs)
        convert = _messages.next_sentence_converter(model=model, truncate=truncate)
        return _rpc.call_stream_async(
            self._stub.NextSentenceStream, inputs, convert, _messages.stream_result, self._settings, timeout
        )
