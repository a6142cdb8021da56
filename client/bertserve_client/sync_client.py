"""Blocking client for the bertserve gRPC API."""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from types import TracebackType
from typing import Any, overload

import grpc

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
from bertserve_client._channel import DEFAULT_TARGET, call_metadata, open_channel, sync_channel
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

__all__ = ["BertClient"]


class BertClient:
    """Blocking bertserve client over one gRPC channel; use it as a context manager or call close().

    ``timeout`` is the default deadline of each call in seconds (None: no deadline); every method
    takes ``timeout=`` to override it. ``tls=True`` uses SSL credentials: ``root_certificates`` to
    trust (None: the system roots) and, for mutual TLS, ``private_key`` with ``certificate_chain``.
    ``metadata`` is sent with every call; ``token`` adds ``authorization: Bearer <token>`` to it, for
    servers that require a token (send it over TLS only). ``options`` are gRPC channel options. An
    existing ``channel`` replaces target/TLS/options and is not closed by close().

    Unary calls answered ``RESOURCE_EXHAUSTED`` or ``UNAVAILABLE`` are retried up to ``retries``
    times (0: never), waiting the server's ``grpc-retry-pushback-ms`` hint (with jitter) or a jittered
    exponential backoff, never past the call's deadline; streams are not retried.

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
        token: str | None = None,
        options: Sequence[tuple[str, Any]] = (),
        channel: grpc.Channel | None = None,
        retries: int = 3,
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
        self._settings = _rpc.CallSettings(timeout, call_metadata(metadata, token), _rpc.RetryPolicy(retries))
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
        truncation: TruncationOption | None = None,
        timeout: float | None = None,
    ) -> fill_mask_pb2.FillMaskResponse:
        """Predict the masked words of one text (a ``str``) or several; one result per text, in order.

        ``top_k=None`` uses the server default (5); ``targets`` restricts the candidates (a target
        that is not one vocabulary entry is scored as its first word piece and listed in the
        response's ``replaced_targets``, one that tokenizes to nothing in ``ignored_targets``); an empty
        ``model`` selects the default model; ``truncate=True`` (or ``truncation="truncate"``) cuts
        over-long inputs instead of rejecting them.
        """
        request = _messages.fill_mask_request(
            texts, top_k=top_k, targets=targets, model=model, truncate=truncate, truncation=truncation
        )
        return _rpc.call_unary(self._stub.FillMask, request, self._settings, timeout)

    def next_sentence(
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
        return self.next_sentence_pairs(
            [(first, second)], model=model, truncate=truncate, truncation=truncation, timeout=timeout
        )

    def next_sentence_pairs(
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
        return _rpc.call_unary(self._stub.NextSentence, request, self._settings, timeout)

    def classify_sequence(
        self,
        inputs: str | tuple[str, str] | Sequence[str | tuple[str, str]],
        *,
        top_k: int | None = None,
        function_to_apply: ScoreFunctionOption | None = None,
        truncation: TruncationOption | None = None,
        model: str = "",
        timeout: float | None = None,
    ) -> classify_sequence_pb2.ClassifySequenceResponse:
        """Classify texts or text pairs; one result per input, in order, labels best first.

        ``inputs`` is a text, a ``(text, text_pair)`` tuple (one pair: a tuple of exactly two ``str``
        is never two texts), or a list of those. ``top_k=None`` returns every label;
        ``function_to_apply`` (``"softmax"``, ``"sigmoid"``, ``"none"``; None: the checkpoint's
        default) turns logits into scores; ``truncation`` is ``"reject"`` (None: the server default),
        ``"truncate"`` or ``"split"`` (average over windows; single texts only).
        """
        request = _messages.classify_sequence_request(
            inputs, top_k=top_k, function_to_apply=function_to_apply, truncation=truncation, model=model
        )
        return _rpc.call_unary(self._stub.ClassifySequence, request, self._settings, timeout)

    def classify_tokens(
        self,
        texts: str | Sequence[str],
        *,
        aggregation: AggregationOption | None = None,
        ignore_labels: Sequence[str] | None = None,
        model: str = "",
        timeout: float | None = None,
    ) -> classify_tokens_pb2.ClassifyTokensResponse:
        """Find the entities of one text (a ``str``) or several; one result per text, in order.

        ``aggregation`` is ``"none"`` (None: the server default), ``"simple"``, ``"first"``,
        ``"average"`` or ``"max"``, as the Hugging Face pipeline's ``aggregation_strategy``.
        ``ignore_labels=None`` leaves out the server's default (``["O"]``); ``[]`` keeps every label.
        """
        request = _messages.classify_tokens_request(
            texts, aggregation=aggregation, ignore_labels=ignore_labels, model=model
        )
        return _rpc.call_unary(self._stub.ClassifyTokens, request, self._settings, timeout)

    @overload
    def answer_question(
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
    def answer_question(
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

    def answer_question(
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
        """Extract answers from contexts; one result per question, in order, answers best first.

        Call it as ``answer_question(question, context)`` for one question, or with one
        ``(question, context)`` tuple or a list of them (and no ``context``). The options left at
        None are unset and get the server's defaults: ``top_k`` answers per question (1),
        ``max_answer_len`` tokens (15), ``doc_stride`` tokens shared by consecutive windows of a
        long context (min(128, window / 2)), ``max_question_len`` tokens (64).
        ``handle_impossible_answer=True`` also considers "no answer" (empty text, start = end = 0).
        """
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
        return _rpc.call_unary(self._stub.AnswerQuestion, request, self._settings, timeout)

    def embed(
        self,
        texts: str | Sequence[str],
        *,
        pooling: PoolingOption | None = None,
        normalize: bool = False,
        truncation: TruncationOption | None = None,
        model: str = "",
        timeout: float | None = None,
    ) -> embed_pb2.EmbedResponse:
        """One vector per text (a ``str`` is one text), in order.

        ``pooling`` is ``"mean"`` (None: the server default) or ``"cls"``; ``normalize=True`` scales
        each vector to unit L2 norm; ``truncation`` is ``"reject"`` (None: the server default),
        ``"truncate"`` or ``"split"`` (average the vectors of overlapping windows).
        """
        request = _messages.embed_request(
            texts, pooling=pooling, normalize=normalize, truncation=truncation, model=model
        )
        return _rpc.call_unary(self._stub.Embed, request, self._settings, timeout)

    def tokenize(
        self,
        texts: str | Sequence[str],
        *,
        skip_special_tokens: bool = False,
        model: str = "",
        timeout: float | None = None,
    ) -> tokenize_pb2.TokenizeResponse:
        """The model's tokens (ids, character offsets) of one text (a ``str``) or several, in order.
        Offsets count code points: ``text[token.start:token.end]``.

        ``skip_special_tokens=True`` leaves out [CLS] and [SEP].
        """
        request = _messages.tokenize_request(texts, skip_special_tokens=skip_special_tokens, model=model)
        return _rpc.call_unary(self._stub.Tokenize, request, self._settings, timeout)

    def list_models(self, *, timeout: float | None = None) -> models_pb2.ListModelsResponse:
        """The models the server serves."""
        return _rpc.call_unary(
            self._stub.ListModels, _messages.list_models_request(), self._settings, timeout
        )

    def model_info(self, model: str = "", *, timeout: float | None = None) -> models_pb2.ModelInfo:
        """Details of one model (empty name: the server's first model)."""
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
        truncation: TruncationOption | None = None,
        timeout: float | None = None,
    ) -> Generator[StreamResult[fill_mask_pb2.FillMaskResponse], None, None]:
        """Run many FillMask requests over one bidirectional stream.

        Each input is a text (sent as a one-text request built with the keyword arguments), a
        FillMaskRequest (sent as is), or a ``(request_id, FillMaskRequest)`` tuple. Plain inputs get
        their index as request_id. Inputs are read lazily while the stream runs; results come in
        completion order. A failed request is a result with ``error`` set; a failed stream raises
        BertServeError, and an exception from ``inputs`` cancels the stream and is re-raised.
        ``timeout`` is a deadline for the whole stream; ``close()`` on the returned generator
        cancels it. Bad keyword arguments raise here, before the stream starts.
        """
        _messages.check_inputs(inputs)
        convert = _messages.fill_mask_converter(
            top_k=top_k, targets=targets, model=model, truncate=truncate, truncation=truncation
        )
        return _rpc.call_stream(
            self._stub.FillMaskStream, inputs, convert, _messages.stream_result, self._settings, timeout
        )

    def next_sentence_stream(
        self,
        inputs: Iterable[NextSentenceInput],
        *,
        model: str = "",
        truncate: bool = False,
        truncation: TruncationOption | None = None,
        timeout: float | None = None,
    ) -> Generator[StreamResult[next_sentence_pb2.NextSentenceResponse], None, None]:
        """Run many NextSentence requests over one bidirectional stream.

        Each input is a ``(first, second)`` pair (sent as a one-pair request built with the keyword
        arguments), a NextSentenceRequest, or a ``(request_id, NextSentenceRequest)`` tuple; otherwise
        as :meth:`fill_mask_stream`.
        """
        _messages.check_inputs(inputs)
        convert = _messages.next_sentence_converter(model=model, truncate=truncate, truncation=truncation)
        return _rpc.call_stream(
            self._stub.NextSentenceStream, inputs, convert, _messages.stream_result, self._settings, timeout
        )

    def classify_sequence_stream(
        self,
        inputs: Iterable[ClassifySequenceInput],
        *,
        top_k: int | None = None,
        function_to_apply: ScoreFunctionOption | None = None,
        truncation: TruncationOption | None = None,
        model: str = "",
        timeout: float | None = None,
    ) -> Generator[StreamResult[classify_sequence_pb2.ClassifySequenceResponse], None, None]:
        """Run many ClassifySequence requests over one bidirectional stream.

        Each input is a text or a ``(text, text_pair)`` tuple (sent as a one-input request built with
        the keyword arguments), a ClassifySequenceRequest, or a ``(request_id,
        ClassifySequenceRequest)`` tuple; otherwise as :meth:`fill_mask_stream`.
        """
        _messages.check_inputs(inputs)
        convert = _messages.classify_sequence_converter(
            top_k=top_k, function_to_apply=function_to_apply, truncation=truncation, model=model
        )
        return _rpc.call_stream(
            self._stub.ClassifySequenceStream,
            inputs,
            convert,
            _messages.stream_result,
            self._settings,
            timeout,
        )

    def classify_tokens_stream(
        self,
        inputs: Iterable[ClassifyTokensInput],
        *,
        aggregation: AggregationOption | None = None,
        ignore_labels: Sequence[str] | None = None,
        model: str = "",
        timeout: float | None = None,
    ) -> Generator[StreamResult[classify_tokens_pb2.ClassifyTokensResponse], None, None]:
        """Run many ClassifyTokens requests over one bidirectional stream.

        Each input is a text (sent as a one-text request built with the keyword arguments), a
        ClassifyTokensRequest, or a ``(request_id, ClassifyTokensRequest)`` tuple; otherwise as
        :meth:`fill_mask_stream`.
        """
        _messages.check_inputs(inputs)
        convert = _messages.classify_tokens_converter(
            aggregation=aggregation, ignore_labels=ignore_labels, model=model
        )
        return _rpc.call_stream(
            self._stub.ClassifyTokensStream, inputs, convert, _messages.stream_result, self._settings, timeout
        )

    def answer_question_stream(
        self,
        inputs: Iterable[AnswerQuestionInput],
        *,
        top_k: int | None = None,
        max_answer_len: int | None = None,
        doc_stride: int | None = None,
        max_question_len: int | None = None,
        handle_impossible_answer: bool = False,
        model: str = "",
        timeout: float | None = None,
    ) -> Generator[StreamResult[answer_question_pb2.AnswerQuestionResponse], None, None]:
        """Run many AnswerQuestion requests over one bidirectional stream.

        Each input is a ``(question, context)`` tuple (sent as a one-question request built with the
        keyword arguments), an AnswerQuestionRequest, or a ``(request_id, AnswerQuestionRequest)``
        tuple; otherwise as :meth:`fill_mask_stream`.
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
        return _rpc.call_stream(
            self._stub.AnswerQuestionStream, inputs, convert, _messages.stream_result, self._settings, timeout
        )

    def embed_stream(
        self,
        inputs: Iterable[EmbedInput],
        *,
        pooling: PoolingOption | None = None,
        normalize: bool = False,
        truncation: TruncationOption | None = None,
        model: str = "",
        timeout: float | None = None,
    ) -> Generator[StreamResult[embed_pb2.EmbedResponse], None, None]:
        """Run many Embed requests over one bidirectional stream.

        Each input is a text (sent as a one-text request built with the keyword arguments), an
        EmbedRequest, or a ``(request_id, EmbedRequest)`` tuple; otherwise as :meth:`fill_mask_stream`.
        """
        _messages.check_inputs(inputs)
        convert = _messages.embed_converter(
            pooling=pooling, normalize=normalize, truncation=truncation, model=model
        )
        return _rpc.call_stream(
            self._stub.EmbedStream, inputs, convert, _messages.stream_result, self._settings, timeout
        )

    def tokenize_stream(
        self,
        inputs: Iterable[TokenizeInput],
        *,
        skip_special_tokens: bool = False,
        model: str = "",
        timeout: float | None = None,
    ) -> Generator[StreamResult[tokenize_pb2.TokenizeResponse], None, None]:
        """Run many Tokenize requests over one bidirectional stream.

        Each input is a text (sent as a one-text request built with the keyword arguments), a
        TokenizeRequest, or a ``(request_id, TokenizeRequest)`` tuple; otherwise as
        :meth:`fill_mask_stream`.
        """
        _messages.check_inputs(inputs)
        convert = _messages.tokenize_converter(skip_special_tokens=skip_special_tokens, model=model)
        return _rpc.call_stream(
            self._stub.TokenizeStream, inputs, convert, _messages.stream_result, self._settings, timeout
        )
