"""gRPC servicer for bertserve.v1.BertService: protobuf → domain → data plane → protobuf.

Thin by design: errors are mapped in one place (errors.STATUS_CODES), every call gets a
request id bound to its log events, and streams answer each request independently.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import structlog

from bertserve.server import convert
from bertserve.server.dataplane import DataPlane
from bertserve.server.errors import Internal, ServingError, status_for
from bertserve.server.logs import get_logger
from bertserve.v1 import bert_service_pb2_grpc, common_pb2, fill_mask_pb2, models_pb2, next_sentence_pb2

Req = TypeVar("Req")
Resp = TypeVar("Resp")
_log = get_logger(component="servicer")
_DONE = object()


def _deadline(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _request_id(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return uuid.uuid4().hex


def _error_proto(exc: ServingError) -> common_pb2.Error:
    code = status_for(exc)
    return common_pb2.Error(code=code.value[0], code_name=code.name, message=exc.message)


class BertServicer(bert_service_pb2_grpc.BertServiceServicer):
    def __init__(self, dataplane: DataPlane, max_stream_inflight: int = 128) -> None:
        self._dp = dataplane
        self._max_stream_inflight = max_stream_inflight

    # ---- unary ---------------------------------------------------------------------------
    async def _unary(
        self, rpc: str, context: grpc.aio.ServicerContext[Any, Any], call: Callable[[], Awaitable[Resp]]
    ) -> Resp:
        request_id = _request_id(context)
        structlog.contextvars.bind_contextvars(request_id=request_id, rpc=rpc)
        start = time.perf_counter()
        try:
            response = await call()
        except ServingError as exc:
            code = status_for(exc)
            _log.info("request_failed", code=code.name, reason=exc.message)
            await context.abort(code, exc.message)
        except asyncio.CancelledError:
            _log.info("request_cancelled")
            raise
        except Exception:
            _log.exception("request_error")
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})")
        _log.debug("request_done", duration_ms=round((time.perf_counter() - start) * 1000, 3))
        return response

    async def FillMask(
        self, request: fill_mask_pb2.FillMaskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> fill_mask_pb2.FillMaskResponse:
        return await self._unary("FillMask", context, lambda: self._fill_mask(request, _deadline(context)))

    async def NextSentence(
        self, request: next_sentence_pb2.NextSentenceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> next_sentence_pb2.NextSentenceResponse:
        return await self._unary(
            "NextSentence", context, lambda: self._next_sentence(request, _deadline(context))
        )

    async def _fill_mask(
        self, request: fill_mask_pb2.FillMaskRequest, deadline: float | None
    ) -> fill_mask_pb2.FillMaskResponse:
        answer = await self._dp.fill_mask(convert.fill_mask_query(request), deadline)
        return convert.fill_mask_response(answer)

    async def _next_sentence(
        self, request: next_sentence_pb2.NextSentenceRequest, deadline: float | None
    ) -> next_sentence_pb2.NextSentenceResponse:
        answer = await self._dp.next_sentence(convert.next_sentence_query(request), deadline)
        return convert.next_sentence_response(answer)

    async def ListModels(
        self, request: models_pb2.ListModelsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> models_pb2.ListModelsResponse:
        registry = self._dp.registry

        async def call() -> models_pb2.ListModelsResponse:
            return models_pb2.ListModelsResponse(
                models=[convert.model_info(m, m.name == registry.default) for m in registry.all()]
            )

        return await self._unary("ListModels", context, call)

    async def GetModelInfo(
        self, request: models_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> models_pb2.GetModelInfoResponse:
        registry = self._dp.registry

        async def call() -> models_pb2.GetModelInfoResponse:
            model = registry.get(request.model)
            return models_pb2.GetModelInfoResponse(
                model=convert.model_info(model, model.name == registry.default)
            )

        return await self._unary("GetModelInfo", context, call)

    # ---- streams -------------------------------------------------------------------------
    async def FillMaskStream(
        self,
        request_iterator: AsyncIterator[fill_mask_pb2.FillMaskStreamRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[fill_mask_pb2.FillMaskStreamResponse]:
        stream = self._stream(
            "FillMaskStream", request_iterator, context, self._fill_mask, fill_mask_pb2.FillMaskStreamResponse
        )
        async for item in stream:
            yield item

    async def NextSentenceStream(
        self,
        request_iterator: AsyncIterator[next_sentence_pb2.NextSentenceStreamRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[next_sentence_pb2.NextSentenceStreamResponse]:
        stream = self._stream(
            "NextSentenceStream",
            request_iterator,
            context,
            self._next_sentence,
            next_sentence_pb2.NextSentenceStreamResponse,
        )
        async for item in stream:
            yield item

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
        stays bounded.
        """
        stream_id = _request_id(context)
        structlog.contextvars.bind_contextvars(stream_id=stream_id, rpc=rpc)
        permits = asyncio.Semaphore(self._max_stream_inflight)
        out: asyncio.Queue[Any] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()

        async def answer(sreq: Any) -> None:
            with structlog.contextvars.bound_contextvars(request_id=sreq.request_id):
                try:
                    response = await call(sreq.request, _deadline(context))
                    reply = response_type(request_id=sreq.request_id, response=response)
                except ServingError as exc:
                    reply = response_type(request_id=sreq.request_id, error=_error_proto(exc))
                except asyncio.CancelledError:
                    raise
                except Exception:
                    _log.exception("stream_request_error")
                    reply = response_type(
                        request_id=sreq.request_id, error=_error_proto(Internal("internal error"))
                    )
                await out.put(reply)

        async def reader() -> None:
            try:
                async for sreq in requests:
                    await permits.acquire()
                    task = asyncio.create_task(answer(sreq))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                await out.put(_DONE)

        read_task = asyncio.create_task(reader())
        try:
            while (item := await out.get()) is not _DONE:
                yield item
                permits.release()
        finally:
            read_task.cancel()
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(read_task, *tasks, return_exceptions=True)
