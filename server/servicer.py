"""gRPC servicer for bertserve.v1.BertService: protobuf → domain → data plane → protobuf.

Thin by design: errors are mapped in one place (errors.STATUS_CODES), every call gets a
request id bound to its log events, and streams answer each request independently. With a
`Metrics`, every unary call and every request of a stream is counted by status code and timed.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import structlog
from google.protobuf import message_factory

from bertserve.server import convert
from bertserve.server.dataplane import DataPlane
from bertserve.server.drain import SHUTTING_DOWN, Drain
from bertserve.server.errors import Internal, InvalidInput, ServingError, status_for, trailers_for
from bertserve.server.logs import get_logger
from bertserve.server.metrics import Metrics, begin_request, current_model
from bertserve.server.scheduling.admission import note_previous_attempts

# How each task RPC runs: its definition converts request and answer (server/tasks); the data
# plane's method named after the task answers the query.
from bertserve.server.tasks.registry import RPCS
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

Req = TypeVar("Req")
Resp = TypeVar("Resp")
_log = get_logger(component="servicer")
_DONE = object()


def _deadline(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


# Metadata a client sends with a retried call: the attempts before it (bertserve's client sends
# x-retry-attempt; gRPC's own retries send grpc-previous-rpc-attempts).
ATTEMPT_KEYS = ("x-retry-attempt", "grpc-previous-rpc-attempts")


def _previous_attempts(context: grpc.aio.ServicerContext[Any, Any]) -> int:
    for key, value in context.invocation_metadata() or ():
        if key in ATTEMPT_KEYS and isinstance(value, str) and value.isdigit() and len(value) <= 3:
            return int(value)
    return 0


def _request_id(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return uuid.uuid4().hex


def _model_of(response: Any) -> str:
    """The model that answered: the response's `model` name, else the one the registry chose."""
    name = getattr(response, "model", None)
    return name if isinstance(name, str) and name else current_model()


# The client's copy of a deadline runs out first: the server's starts when the call arrives. So
# the client's cancellation at its deadline can reach the server a little before the server's own
# copy expires; within this much of it, a cancellation counts as the deadline.
DEADLINE_SLACK_S = 0.05


def _cancelled_code(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """A call cancelled by gRPC: at its deadline (give or take DEADLINE_SLACK_S), or cancelled by
    the client."""
    remaining = context.time_remaining()
    return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= DEADLINE_SLACK_S else "CANCELLED"


@dataclass(frozen=True)
class Malformed:
    """A request message that did not parse. `add_to_server`'s parsers return it instead of
    raising, for which gRPC would answer UNKNOWN naming the parser's exception; the servicer
    answers INVALID_ARGUMENT."""

    message_type: str

    def error(self) -> InvalidInput:
        return InvalidInput(f"the request is not a valid {self.message_type} message")


def _check_parsed(request: Any) -> None:
    if isinstance(request, Malformed):
        raise request.error()


def _tolerant_parser(message_class: Any, full_name: str) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except Exception:  # DecodeError: corrupt wire format, bad UTF-8, too deep, ...
            return Malformed(full_name)

    return parse


def add_to_server(servicer: BertServicer, server: grpc.aio.Server) -> None:
    """Register BertService on `server`, as the generated add_BertServiceServicer_to_server does,
    but with request parsers that turn a malformed message into INVALID_ARGUMENT."""
    service = bert_service_pb2.DESCRIPTOR.services_by_name["BertService"]
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        parse = _tolerant_parser(
            message_factory.GetMessageClass(method.input_type), method.input_type.full_name
        )
        serialize = message_factory.GetMessageClass(method.output_type).SerializeToString
        behaviour = getattr(servicer, method.name)
        if method.client_streaming and method.server_streaming:
            handler = grpc.stream_stream_rpc_method_handler(
                behaviour, request_deserializer=parse, response_serializer=serialize
            )
        elif not method.client_streaming and not method.server_streaming:
            handler = grpc.unary_unary_rpc_method_handler(
                behaviour, request_deserializer=parse, response_serializer=serialize
            )
        else:  # BertService has none; the generated registration would be needed for them
            raise TypeError(f"{method.full_name}: only unary and bidirectional methods are handled")
        handlers[method.name] = handler
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


def _error_proto(exc: ServingError) -> common_pb2.Error:
    code = status_for(exc)
    return common_pb2.Error(code=code.value[0], code_name=code.name, message=exc.message)


def _unary_rpc(name: str) -> Any:
    async def rpc(self: BertServicer, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await self._unary(name, context, lambda: self._call(name, request, _deadline(context)))

    rpc.__name__ = name
    return rpc


def _stream_rpc(name: str, response_type: Callable[..., Any]) -> Any:
    async def rpc(
        self: BertServicer, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        call = functools.partial(self._call, name)
        async for item in self._stream(f"{name}Stream", request_iterator, context, call, response_type):
            yield item

    rpc.__name__ = f"{name}Stream"
    return rpc


class BertServicer(bert_service_pb2_grpc.BertServiceServicer):
    """Every task RPC, unary and stream, goes through `_call`; the table above says how."""

    def __init__(
        self,
        dataplane: DataPlane,
        max_stream_inflight: int = 128,
        metrics: Metrics | None = None,
        drain: Drain | None = None,
    ) -> None:
        self._dp = dataplane
        self._drain = drain
        self._max_stream_inflight = max_stream_inflight
        self._metrics = metrics
        # Stream requests read and not yet answered, over every open stream (each stream holds at
        # most max_stream_inflight): bertserve_stream_pending_requests.
        self.stream_pending = 0
        if metrics is not None:
            metrics.watch_streams(lambda: self.stream_pending)

    def _observe(self, rpc: str, model: str, code: str, start: float, later: bool = False) -> None:
        """Count a finished request; with `later`, on the event loop's next turn, so that an answer
        goes out before its bookkeeping (the duration is taken now either way)."""
        if self._metrics is None:
            return
        seconds = time.perf_counter() - start
        if later:
            asyncio.get_running_loop().call_soon(self._metrics.observe_request, rpc, model, code, seconds)
        else:
            self._metrics.observe_request(rpc, model, code, seconds)

    async def _call(self, name: str, request: Any, deadline: float | None) -> Any:
        _check_parsed(request)
        task = RPCS[name]
        answer = await getattr(self._dp, task.task.value)(task.to_query(request), deadline)
        return task.to_response(answer)

    # ---- unary ---------------------------------------------------------------------------
    async def _unary(
        self, rpc: str, context: grpc.aio.ServicerContext[Any, Any], call: Callable[[], Awaitable[Resp]]
    ) -> Resp:
        request_id = _request_id(context)
        structlog.contextvars.bind_contextvars(request_id=request_id, rpc=rpc)
        begin_request()
        note_previous_attempts(_previous_attempts(context))  # admission favours retried calls
        start = time.perf_counter()
        try:
            response = await call()
        except ServingError as exc:
            code = status_for(exc)
            _log.info("request_failed", code=code.name, reason=exc.message)
            self._observe(rpc, current_model(), code.name, start)
            # An Overloaded carries its retry hint as the grpc-retry-pushback-ms trailer.
            await context.abort(code, exc.message, trailing_metadata=trailers_for(exc))
        except asyncio.CancelledError:
            _log.info("request_cancelled")
            self._observe(rpc, current_model(), _cancelled_code(context), start)
            raise
        except Exception:
            _log.exception("request_error")
            self._observe(rpc, current_model(), grpc.StatusCode.INTERNAL.name, start)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})")
        self._observe(rpc, _model_of(response), grpc.StatusCode.OK.name, start, later=True)
        _log.debug("request_done", duration_ms=round((time.perf_counter() - start) * 1000, 3))
        return response

    FillMask = _unary_rpc("FillMask")
    FillMaskStream = _stream_rpc("FillMask", fill_mask_pb2.FillMaskStreamResponse)
    NextSentence = _unary_rpc("NextSentence")
    NextSentenceStream = _stream_rpc("NextSentence", next_sentence_pb2.NextSentenceStreamResponse)
    ClassifySequence = _unary_rpc("ClassifySequence")
    ClassifySequenceStream = _stream_rpc(
        "ClassifySequence", classify_sequence_pb2.ClassifySequenceStreamResponse
    )
    ClassifyTokens = _unary_rpc("ClassifyTokens")
    ClassifyTokensStream = _stream_rpc("ClassifyTokens", classify_tokens_pb2.ClassifyTokensStreamResponse)
    AnswerQuestion = _unary_rpc("AnswerQuestion")
    AnswerQuestionStream = _stream_rpc("AnswerQuestion", answer_question_pb2.AnswerQuestionStreamResponse)
    Embed = _unary_rpc("Embed")
    EmbedStream = _stream_rpc("Embed", embed_pb2.EmbedStreamResponse)
    Tokenize = _unary_rpc("Tokenize")
    TokenizeStream = _stream_rpc("Tokenize", tokenize_pb2.TokenizeStreamResponse)

    async def ListModels(
        self, request: models_pb2.ListModelsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> models_pb2.ListModelsResponse:
        registry = self._dp.registry

        async def call() -> models_pb2.ListModelsResponse:
            _check_parsed(request)
            return models_pb2.ListModelsResponse(
                models=[convert.model_info(m, registry.default_for(m)) for m in registry.all()]
            )

        return await self._unary("ListModels", context, call)

    async def GetModelInfo(
        self, request: models_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> models_pb2.GetModelInfoResponse:
        registry = self._dp.registry

        async def call() -> models_pb2.GetModelInfoResponse:
            _check_parsed(request)
            model = registry.named(request.model)
            return models_pb2.GetModelInfoResponse(
                model=convert.model_info(model, registry.default_for(model))
            )

        return await self._unary("GetModelInfo", context, call)

    # ---- streams -------------------------------------------------------------------------
    async def _stream(
        self,
        rpc: str,
        requests: AsyncIterator[Any],
        context: grpc.aio.ServicerContext[Any, Any],
        call: Callable[[Any, float | None], Awaitable[Any]],
        response_type: Callable[..., Any],
    ) -> AsyncIterator[Any]:
        """Answer each stream request on its own task; responses go out as they finish.

        Each `StreamRequest{request_id, request}` gets exactly one
        `response_type(request_id=..., response=...)` or `(request_id=..., error=...)`.

        At most `max_stream_inflight` requests of one stream are unanswered at a time: a permit
        is held from reading a request until its response is written, so a client that sends
        faster than the server answers (or reads) is slowed by gRPC flow control, and memory
        stays bounded. Each request is also admitted by its model like a unary call: one past
        the model's admission limits gets its own RESOURCE_EXHAUSTED error, and the stream goes on.
        """
        stream_id = _request_id(context)
        structlog.contextvars.bind_contextvars(stream_id=stream_id, rpc=rpc)
        permits = asyncio.Semaphore(self._max_stream_inflight)
        out: asyncio.Queue[Any] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()
        held = 0  # permits taken and not yet given back (this stream's part of stream_pending)
        # A message that did not parse has no request id to answer by: the requests read before
        # it are answered, then the stream ends with INVALID_ARGUMENT.
        malformed: list[Malformed] = []

        def hold(n: int) -> None:
            nonlocal held
            held += n
            self.stream_pending += n

        async def answer(sreq: Any) -> None:
            with structlog.contextvars.bound_contextvars(request_id=sreq.request_id):
                begin_request()
                start = time.perf_counter()
                try:
                    response = await call(sreq.request, _deadline(context))
                    reply = response_type(request_id=sreq.request_id, response=response)
                except ServingError as exc:
                    # Field paths start at the stream message: "request.texts[0]".
                    error = _error_proto(convert.in_stream(exc, sreq.request))
                    reply = response_type(request_id=sreq.request_id, error=error)
                except asyncio.CancelledError:
                    self._observe(rpc, current_model(), _cancelled_code(context), start)
                    raise
                except Exception:
                    _log.exception("stream_request_error")
                    reply = response_type(
                        request_id=sreq.request_id, error=_error_proto(Internal("internal error"))
                    )
                if reply.HasField("error"):
                    self._observe(rpc, current_model(), reply.error.code_name, start)
                else:
                    self._observe(rpc, _model_of(reply.response), grpc.StatusCode.OK.name, start)
                await out.put(reply)

        async def reader() -> None:
            async for sreq in requests:
                if isinstance(sreq, Malformed):
                    malformed.append(sreq)
                    return
                await permits.acquire()
                hold(1)
                task = asyncio.create_task(answer(sreq))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        async def finisher() -> None:
            """After the last request is read (or reading stopped), wait for every answer."""
            try:
                await asyncio.wait([read_task])
                await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                await out.put(_DONE)

        read_task = asyncio.create_task(reader())
        # On shutdown the stream stops reading: what it read is answered, then it ends
        # UNAVAILABLE (drain.py). A stream whose client had finished sending ends OK.
        cut: list[bool] = []

        def stop_reading(_: object) -> None:
            if not read_task.done():
                cut.append(True)
                read_task.cancel()

        draining = None if self._drain is None else asyncio.create_task(self._drain.began.wait())
        if draining is not None:
            draining.add_done_callback(stop_reading)
        finish_task = asyncio.create_task(finisher())
        try:
            while (item := await out.get()) is not _DONE:
                yield item
                permits.release()
                hold(-1)
            if malformed:
                error = malformed[0].error()
                _log.info("stream_request_malformed", reason=error.message)
                self._observe(
                    rpc, current_model(), grpc.StatusCode.INVALID_ARGUMENT.name, time.perf_counter()
                )
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, error.message)
            if cut:
                _log.info("stream_cut_by_shutdown")
                await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
        finally:
            hold(-held)
            for task in (read_task, finish_task, draining, *tasks):
                if task is not None:
                    task.cancel()
            await asyncio.gather(
                read_task, finish_task, *([draining] if draining else []), *tasks, return_exceptions=True
            )
