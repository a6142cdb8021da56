"""Deadlines and cancellation: work a client no longer waits for is dropped before it reaches a
replica, or discarded when it already has; its admission permit is freed at once; the other
requests of its batch are unaffected.

One replica whose fake batches take DELAY_S, at most 3 sequences a batch (a batch that is not
full waits at most 100 ms for more: `--no-fill-queued-batches`, so the queued batch does not wait
for the running one to near its end, which the timings below assume; the batcher's unit tests
cover deadlines with it on) and 2 batches in flight (one running, one queued at the replica): a
third batch waits in the front end's queue. The tests synchronise on the server's
gauges (admitted requests, queue depth) and count what reached the replica with GetModelInfo's
`ReplicaInfo.sequences` and `batches`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import grpc
import pytest

from bertserve.v1 import bert_service_pb2_grpc, fill_mask_pb2
from tests.support.probes import fake_server_args, metric, model_info, wait_until
from tests.support.server import Connected, serving

pytestmark = pytest.mark.integration

DELAY_S = 1.0
TEXT = "Paris is the [MASK] of France."


class Env(Connected):
    @cached_property
    def stub(self) -> bert_service_pb2_grpc.BertServiceStub:
        return bert_service_pb2_grpc.BertServiceStub(self.channel)

    def inflight(self) -> float:
        return metric(self.metrics_port, "bertserve_inflight_requests")

    def queued(self) -> float:
        return metric(self.metrics_port, "bertserve_queue_depth", task="fill_mask")

    def settled(self, inflight: int, queued: int = 0) -> bool:
        return self.inflight() == inflight and self.queued() == queued

    def counted(self) -> tuple[int, int]:
        """(sequences, batches) the replica computed, as the front end counted them."""
        replica = model_info(self.channel).replicas[0]
        return replica.sequences, replica.batches

    def requests(self, code: str) -> float:
        """FillMask requests answered with `code`: unary calls and stream requests."""
        return metric(self.metrics_port, "bertserve_requests_total", code=code)


@pytest.fixture(scope="module")
def env(tiny_checkpoint: Path) -> Iterator[Env]:
    args = fake_server_args(
        tiny_checkpoint,
        "--max-batch-size",
        "3",
        "--max-wait-ms",
        "100",
        "--batches-per-replica",
        "2",
        "--no-fill-queued-batches",
        replicas=1,
        delay_ms=DELAY_S * 1000,
    )
    with serving(args, metrics=True) as running, running.channel() as channel:
        yield Env(running, channel)


def _request() -> fill_mask_pb2.FillMaskRequest:
    return fill_mask_pb2.FillMaskRequest(texts=[TEXT], top_k=1)


def _idle(env: Env) -> tuple[int, int]:
    """Wait until the replica is idle and nothing is admitted or queued; return its counters.

    A barrier: the replica runs its batches in order, so once a new request is answered every
    batch sent before it is done (a request that timed out may have left one computing)."""
    env.stub.FillMask(_request(), timeout=10)
    wait_until(lambda: env.settled(0, 0))
    return env.counted()


def test_deadline_shorter_than_the_work_gets_deadline_exceeded_without_waiting_for_it(env: Env) -> None:
    _idle(env)
    exceeded = env.requests("DEADLINE_EXCEEDED")

    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as unary:
        env.stub.FillMask(_request(), timeout=0.15)
    unary_s = time.monotonic() - start
    assert unary.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    start = time.monotonic()
    stream_request = fill_mask_pb2.FillMaskStreamRequest(request_id="late", request=_request())
    with pytest.raises(grpc.RpcError) as stream:
        list(env.stub.FillMaskStream(iter([stream_request]), timeout=0.15))
    stream_s = time.monotonic() - start
    assert stream.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    # The client is told at its deadline, not when the (1 s) batch is done, and the server
    # counts both as DEADLINE_EXCEEDED.
    assert unary_s < DELAY_S and stream_s < DELAY_S, (unary_s, stream_s)
    wait_until(lambda: env.requests("DEADLINE_EXCEEDED") >= exceeded + 2)
    wait_until(lambda: env.settled(0, 0))
    print(
        json.dumps(
            {
                "test": "deadline_shorter_than_work",
                "batch_s": DELAY_S,
                "deadline_s": 0.15,
                "unary_answered_after_s": round(unary_s, 3),
                "stream_answered_after_s": round(stream_s, 3),
            }
        )
    )


def test_request_whose_deadline_passes_while_queued_never_reaches_the_replica(env: Env) -> None:
    sequences, batches = _idle(env)

    running = env.stub.FillMask.future(_request(), timeout=10)  # the replica's running batch
    wait_until(lambda: env.settled(1, 0))
    waiting = env.stub.FillMask.future(_request(), timeout=10)  # the batch queued at the replica
    wait_until(lambda: env.settled(2, 0))

    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as late:
        env.stub.FillMask(_request(), timeout=0.25)  # waits in the front end's queue
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    late_s = time.monotonic() - start
    assert late_s < DELAY_S
    # Out of the queue and its permit back while the replica is still busy with the others.
    wait_until(lambda: env.settled(2, 0), timeout=DELAY_S)

    assert running.result().results[0].masks and waiting.result().results[0].masks
    assert env.counted() == (sequences + 2, batches + 2)  # the late request was never computed
    print(
        json.dumps(
            {
                "test": "deadline_passed_in_queue",
                "deadline_s": 0.25,
                "answered_after_s": round(late_s, 3),
                "sequences_computed": 2,
                "sequences_sent": 3,
            }
        )
    )


def test_cancelled_requests_free_their_permits_and_their_batch_mates_succeed(env: Env) -> None:
    sequences, batches = _idle(env)
    cancelled = env.requests("CANCELLED")

    running = env.stub.FillMask.future(_request(), timeout=10)
    wait_until(lambda: env.settled(1, 0))
    # Three requests fill the queued batch (max batch size 3), which goes to the replica at once.
    mates = [env.stub.FillMask.future(_request(), timeout=10) for _ in range(3)]
    wait_until(lambda: env.settled(4, 0))
    queued = env.stub.FillMask.future(_request(), timeout=10)  # no slot left: front-end queue
    wait_until(lambda: env.settled(5, 1))

    mates[1].cancel()  # mid-request: its batch is already at the replica
    queued.cancel()  # still queued: never batched
    # Both permits are back, and the queue is empty, while the batches are still computing.
    wait_until(lambda: env.settled(3, 0), timeout=DELAY_S)

    assert running.result().results[0].masks
    for mate in (mates[0], mates[2]):
        assert mate.result().results[0].masks[0].candidates
    assert mates[1].cancelled() and queued.cancelled()
    # The cancelled batch mate was computed with its batch (its result discarded); the queued
    # request never was.
    assert env.counted() == (sequences + 4, batches + 2)
    wait_until(lambda: env.requests("CANCELLED") >= cancelled + 2)


def test_cancelled_stream_releases_every_pending_request(env: Env) -> None:
    _idle(env)
    stream_pending = "bertserve_stream_pending_requests"

    def requests() -> Iterator[fill_mask_pb2.FillMaskStreamRequest]:
        for i in range(6):
            yield fill_mask_pb2.FillMaskStreamRequest(request_id=f"r{i}", request=_request())

    call = env.stub.FillMaskStream(requests(), timeout=30)
    wait_until(lambda: metric(env.metrics_port, stream_pending) == 6 and env.inflight() == 6)
    call.cancel()
    wait_until(lambda: metric(env.metrics_port, stream_pending) == 0 and env.inflight() == 0, timeout=DELAY_S)
    # The server goes on serving.
    assert env.stub.FillMask(_request(), timeout=10).results[0].masks
