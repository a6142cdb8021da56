"""Retried calls get a little room past max_inflight (server/scheduling/admission.py), and the
client says which attempt a call is (x-retry-attempt)."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from bertserve.server.errors import Overloaded
from bertserve.server.scheduling.admission import (
    MAX_RETRY_HEADROOM,
    Admission,
    AdmissionLimits,
    Permit,
    note_previous_attempts,
)
from bertserve.v1 import bert_service_pb2_grpc, fill_mask_pb2
from bertserve_client import AsyncBertClient, BertClient, BertServeError
from bertserve_client._rpc import RETRY_ATTEMPT_KEY


def _acquire(admission: Admission, previous_attempts: int) -> Permit:
    """try_acquire as a call with that many previous attempts (its own context, as a request task)."""

    def run() -> Permit:
        note_previous_attempts(previous_attempts)
        return admission.try_acquire()

    return contextvars.copy_context().run(run)


def test_a_retried_call_may_pass_max_inflight_by_its_previous_attempts_and_no_more() -> None:
    admission = Admission(AdmissionLimits(max_inflight=2, max_queued_tokens=0), lambda: 0, lambda: 100)
    held = [_acquire(admission, 0), _acquire(admission, 0)]
    with pytest.raises(Overloaded):
        _acquire(admission, 0)  # a first attempt: the model is full
    held.append(_acquire(admission, 1))  # first retry: one past the limit
    with pytest.raises(Overloaded):
        _acquire(admission, 1)
    held.append(_acquire(admission, 2))
    many = [_acquire(admission, 99) for _ in range(MAX_RETRY_HEADROOM - 2)]
    assert admission.inflight == 2 + MAX_RETRY_HEADROOM
    with pytest.raises(Overloaded):
        _acquire(admission, 99)  # the headroom is bounded
    for permit in held + many:
        permit.release()
    assert admission.inflight == 0


def test_stream_requests_and_unmarked_calls_get_no_headroom() -> None:
    admission = Admission(AdmissionLimits(max_inflight=1, max_queued_tokens=0), lambda: 0, lambda: 100)
    with admission.try_acquire(), pytest.raises(Overloaded):
        admission.try_acquire()  # the default context: no previous attempts


class Recording(bert_service_pb2_grpc.BertServiceServicer):
    """Rejects the first two attempts of a call (with a short pushback), records their metadata."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        self.lock = threading.Lock()

    def FillMask(self, request: Any, context: grpc.ServicerContext) -> fill_mask_pb2.FillMaskResponse:
        with self.lock:
            self.seen.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})
            attempt = len(self.seen)
        if attempt <= 2:
            context.set_trailing_metadata((("grpc-retry-pushback-ms", "1"),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "full")
        return fill_mask_pb2.FillMaskResponse(model="bert")


@pytest.fixture
def recording() -> Iterator[tuple[Recording, str]]:
    service = Recording()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    bert_service_pb2_grpc.add_BertServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield service, f"127.0.0.1:{port}"
    server.stop(grace=None)


def test_the_client_numbers_its_retries(recording: tuple[Recording, str]) -> None:
    service, address = recording
    with BertClient(address, timeout=10, metadata=[("x-api-key", "k")]) as client:
        assert client.fill_mask("A [MASK].").model == "bert"
    assert [m.get(RETRY_ATTEMPT_KEY) for m in service.seen] == [None, "1", "2"]
    assert all(m["x-api-key"] == "k" for m in service.seen)  # the client's own metadata is kept


def test_the_async_client_numbers_its_retries(recording: tuple[Recording, str]) -> None:
    service, address = recording

    async def main() -> None:
        async with AsyncBertClient(address, timeout=10) as client:
            await client.fill_mask("A [MASK].")

    asyncio.run(main())
    assert [m.get(RETRY_ATTEMPT_KEY) for m in service.seen] == [None, "1", "2"]


def test_no_retry_no_attempt_header(recording: tuple[Recording, str]) -> None:
    service, address = recording
    with BertClient(address, timeout=10, retries=0) as client, pytest.raises(BertServeError):
        client.fill_mask("A [MASK].")
    assert [m.get(RETRY_ATTEMPT_KEY) for m in service.seen] == [None]
