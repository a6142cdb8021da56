"""Blocking client for the bertserve gRPC API."""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from types import TracebackType
from typing import Any

import grpc

from bertserve.v1 import bert_service_pb2_grpc, fill_mask_pb2, models_pb2, next_sentence_pb2
from bertserve_client import _messages, _rpc
from bertserve_client._channel import DEFAULT_TARGET, open_channel, sync_channel
from bertserve_client.streaming import FillMaskInput, NextSentenceInput, StreamResult

__all__ = ["BertClient"]


class BertClient:
    """Blocking bertserve client over one gRPC channel; use it as a context manager or call close().

    ``timeout`` is the default deadline of each call in seconds (None: no deadline); every method
    takes ``timeout=`` to override it. ``tls=True`` uses SSL credentials: ``root_certificates`` to
    trust (None: the system roots) and, for mutual TLS, ``private_key`` with ``certificate_chain``.
    ``metadata`` is sent with every call, ``options`` are gRPC channel options. An existing
    ``channel`` replaces target/TLS/options and is not closed by close().

    Failed calls raise :class:`~bertserve_client.BertServeError`.
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
        channel: grpc.Channel | None = None,
    ) -> None:
        self._channel, self._owns_channel = open_channel(
            sync_channel,
            channel,
            target=target,
            tls=tls,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            options=options,
        )
        self._settings = _rpc.CallSettings(timeout, tuple(metadata))
        self._stub = bert_service_pb2_grpc.BertServiceStub(self._channel)

    @property
    def channel(self) -> grpc.Channel:
        """The underlying gRPC channel."""
        return self._channel

    def close(self) -> None:
        """Close the channel if this client created it. Safe to call more than once."""
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> BertClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def fill_mask(
        self,
        texts: str | Sequence[str],
        *,
        top_k: int | None = None,
        targets: Sequence[str] = (),
        model: str = "",
        truncate: bool = False,
        timeout: float | None = None,
    ) -> fill_mask_pb2.FillMaskResponse:
        """Predict the masked words of one text (a ``str``) or several; one result per text, in order.

        ``top_k=None`` uses the server default (5); ``targets`` restricts the candidates; an empty
        ``model`` selects the default model; ``truncate=True`` cuts over-long inputs instead of
        rejecting them.
        """
        request = _messages.fill_mask_request(
            texts, top_k=top_k, targets=targets, model=model, truncate=truncate
        )
        return _rpc.call_unary(self._stub.FillMask, request, self._settings, timeout)

    def next_sentence(
        self,
        first: str,
        second: str,
        *,
        model: str = "",
        truncate: bool = False,
        timeout: float | None = None,
    ) -> next_sentence_pb2.NextSentenceResponse:
        """Score whether ``second`` follows ``first`` (one result)."""
        return self.next_sentence_pairs([(first, second)], model=model, truncate=truncate, timeout=timeout)

    def next_sentence_pairs(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        model: str = "",
        truncate: bool = False,
        timeout: float | None = None,
    ) -> next_sentence_pb2.NextSentenceResponse:
        """Score several ``(first, second)`` pairs; one result per pair, in order."""
        request = _messages.next_sentence_request(pairs, model=model, truncate=truncate)
        return _rpc.call_unary(self._stub.NextSentence, request, self._settings, timeout)

    def list_models(self, *, timeout: float | None = None) -> models_pb2.ListModelsResponse:
        """The models the server serves."""
        return _rpc.call_unary(
            self._stub.ListModels, _messages.list_models_request(), self._settings, timeout
        )

    def model_info(self, model: str = "", *, timeout: float | None = None) -> models_pb2.ModelInfo:
        """Details of one model (empty name: the default model)."""
        request = _messages.model_info_request(model)
        return _rpc.call_unary(self._stub.GetModelInfo, request, self._settings, timeout).model

    def fill_mask_stream(
        self,
        inputs: Iterable[FillMaskInput],
        *,
        top_k: int | None = None,
        targets: Sequence[str] = (),
        model: str = "",
        truncate: bool = False,
        timeout: float | None = None,
    ) -> Generator[StreamResult[fill_mask_pb2.FillMaskResponse], None, None]:
        """Run many FillMask requests over one bidirectional stream.

        Each input is a text (sent as a one-text request built with the keyword arguments), a
        FillMaskRequest (sent as is), or a ``(request_id, FillMaskRequest)`` tuple. Plain inputs get
        their index as request_id. Inputs are read lazily while the stream runs; results come in
        completion order. A failed request is a result with ``error`` set; a failed stream raises
        BertServeError, and an exception from ``inputs`` cancels the stream and is re-raised.
        ``timeout`` is a deadline for the whole stream; ``close()`` on the returned generator
        cancels it.
        """
        _messages.check_inputs(inputs)
        convert = _messages.fill_mask_converter(top_k=top_k, targets=targets, model=model, truncate=truncate)
        return _rpc.call_stream(
            self._stub.FillMaskStream, inputs, convert, _messages.stream_result, self._settings, timeout
        )

    def next_sentence_stream(
        self,
        inputs: Iterable[NextSentenceInput],
        *,
        model: str = "",
        truncate: bool = False,
        timeout: float | None = None,
    ) -> Generator[StreamResult[next_sentence_pb2.NextSentenceResponse], None, None]:
        """Run many NextSentence requests over one bidirectional stream.

        Each input is a ``(first, second)`` pair (sent as a one-pair request built with the keyword
        arguments), a NextSentenceRequest, or a ``(request_id, NextSentenceRequest)`` tuple; otherwise
        as :meth:`fill_mask_stream`.
        """
        _messages.check_inputs(inputs)
        convert = _messages.next_sentence_converter(model=model, truncate=truncate)
        return _rpc.call_stream(
            self._stub.NextSentenceStream, inputs, convert, _messages.stream_result, self._settings, timeout
        )
