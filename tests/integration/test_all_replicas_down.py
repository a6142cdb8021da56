"""Every replica of a model restarting at once (both killed with SIGKILL, by the pid ReplicaInfo
reports; Ray restarts them).

The promise (docs/reliability.md, "Replica faults"): with no replica READY, a unary call whose
deadline ends before a replica is expected back (the pool's measured warm-up or restart time)
fails at once with UNAVAILABLE and a `grpc-retry-pushback-ms` hint, instead of waiting for
DEADLINE_EXCEEDED; calls already queued that can no longer make it fail the same way when the
last ready replica goes; a call with a long enough deadline waits and is answered once a replica
is back.

`pytest tests/integration/test_all_replicas_down.py -q -s` prints a JSON summary line per test.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from bertserve.v1 import bert_service_pb2_grpc, fill_mask_pb2, models_pb2
from bertserve_client import BertClient, BertServeError
from tests.support.probes import fake_server_args, kill_replica, metric, model_info, pid_alive, wait_until
from tests.support.server import Connected, connected

pytestmark = pytest.mark.integration

READY = models_pb2.REPLICA_STATE_READY
RESTARTING = models_pb2.REPLICA_STATE_RESTARTING
PUSHBACK = "grpc-retry-pushback-ms"
TEXT = "Paris is the [MASK] of France."
BATCH_MS = 1000  # long batches: the replicas are killed in the middle of one
SHORT_S = 0.6  # a deadline shorter than any replica's warm-up or restart here
LONG_S = 60.0


@pytest.fixture(scope="module")
def env(tiny_checkpoint: Path) -> Iterator[Connected]:
    """Two replicas, one batch each at a time, so that further calls wait in the front end."""
    args = fake_server_args(
        tiny_checkpoint, "--batches-per-replica", "1", "--max-wait-ms", "5", replicas=2, delay_ms=BATCH_MS
    )
    with connected(args, metrics=True) as env:
        yield env


def _request() -> fill_mask_pb2.FillMaskRequest:
    return fill_mask_pb2.FillMaskRequest(texts=[TEXT], top_k=2)


def _states(env: Connected) -> list[int]:
    return [r.state for r in model_info(env.channel).replicas]


def _pushback_ms(error: grpc.Call) -> int:
    values = [v for k, v in (error.trailing_metadata() or ()) if k == PUSHBACK]
    assert len(values) == 1, error.trailing_metadata()
    return int(values[0])


def _kill_all(env: Connected) -> list[int]:
    pids = [r.pid for r in model_info(env.channel).replicas]
    for pid in pids:
        kill_replica(pid)
    wait_until(lambda: not any(pid_alive(pid) for pid in pids), timeout=10)
    return pids


def _all_back(env: Connected, pids: list[int]) -> bool:
    replicas = model_info(env.channel).replicas
    return all(r.state == READY and r.pid not in pids for r in replicas)


def test_queued_calls_that_cannot_wait_fail_fast_when_every_replica_goes(env: Connected) -> None:
    stub = bert_service_pb2_grpc.BertServiceStub(env.channel)
    with ThreadPoolExecutor(8) as pool:
        # One long-deadline call computing on each replica (1 s batches, one batch per replica).
        holders = [pool.submit(stub.FillMask, _request(), timeout=LONG_S) for _ in range(2)]
        wait_until(lambda: metric(env.metrics_port, "bertserve_inflight_requests") == 2, timeout=10)
        wait_until(lambda: metric(env.metrics_port, "bertserve_queue_depth") == 0, timeout=10)
        # Three short-deadline calls and one long one wait in the front end's queue behind them.
        sent = time.monotonic()
        short: list[Future[fill_mask_pb2.FillMaskResponse]] = [
            pool.submit(stub.FillMask, _request(), timeout=SHORT_S) for _ in range(3)
        ]
        patient = pool.submit(stub.FillMask, _request(), timeout=LONG_S)
        wait_until(lambda: metric(env.metrics_port, "bertserve_queue_depth") == 4, timeout=SHORT_S / 2)
        pids = _kill_all(env)
        errors = [f.exception(timeout=10) for f in short]
        failed_after = time.monotonic() - sent
        for error in errors:
            assert isinstance(error, grpc.Call) and isinstance(error, grpc.RpcError)
            assert error.code() is grpc.StatusCode.UNAVAILABLE, error
            assert "none is expected back" in (error.details() or "")
            assert 10 <= _pushback_ms(error) <= 5000
        # Failed at the kill, well before their deadline (they would have waited for it).
        assert failed_after < SHORT_S
        assert patient.result(timeout=LONG_S).results  # waited, and answered once a replica is back
        holder_codes = [_code(f) for f in holders]
    wait_until(lambda: _all_back(env, pids), timeout=60)
    print(
        json.dumps(
            {
                "test": "queued_calls_fail_fast",
                "short_deadline_s": SHORT_S,
                "short_failed_after_s": round(failed_after, 3),
                "pushback_ms": [_pushback_ms(e) for e in errors if isinstance(e, grpc.Call)],
                "holders": holder_codes,
            }
        )
    )


def _code(call: Future[fill_mask_pb2.FillMaskResponse]) -> str:
    error = call.exception(timeout=LONG_S)
    return "OK" if error is None else error.code().name  # type: ignore[attr-defined]


def _take_every_replica_down(env: Connected) -> list[int]:
    """Kill both replicas and send calls until the pool has seen both fail (RESTARTING): a call
    to a killed replica fails at once over its direct channel. Returns the killed pids.

    Each replica first computes a batch, so that its channel is open: without one, the batch
    would go as a Ray actor call, which Ray holds until it has restarted the actor, and the pool
    would not see the replica go down (it is then READY again, in a new process)."""
    stub = bert_service_pb2_grpc.BertServiceStub(env.channel)
    before = [r.sequences for r in model_info(env.channel).replicas]
    with ThreadPoolExecutor(2) as pool:  # one batch per replica at a time: one call each
        calls = [pool.submit(stub.FillMask, _request(), timeout=LONG_S) for _ in range(2)]
        assert all(call.result().results for call in calls)
    after = [r.sequences for r in model_info(env.channel).replicas]
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)
    pids = _kill_all(env)
    for _ in range(10):
        if all(s == RESTARTING for s in _states(env)):
            return pids
        with contextlib.suppress(grpc.RpcError):
            stub.FillMask(_request(), timeout=SHORT_S)
    raise AssertionError(
        f"the replicas did not both turn RESTARTING: {_states(env)}\n{env.server.log()[-6000:]}"
    )


def test_with_every_replica_restarting_a_short_deadline_fails_fast_and_a_long_one_waits(
    env: Connected,
) -> None:
    stub = bert_service_pb2_grpc.BertServiceStub(env.channel)
    wait_until(lambda: all(s == READY for s in _states(env)), timeout=60)
    pids = _take_every_replica_down(env)

    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        stub.FillMask(_request(), timeout=SHORT_S)
    raw_after = time.monotonic() - start
    error = info.value
    assert isinstance(error, grpc.Call)
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    pushback = _pushback_ms(error)
    assert 10 <= pushback <= 5000
    assert raw_after < SHORT_S / 2  # at once, not at the deadline

    # The client library: the pushback is past the deadline, so it does not retry.
    with BertClient(env.server.address, timeout=SHORT_S) as client:
        start = time.monotonic()
        with pytest.raises(BertServeError) as client_info:
            client.fill_mask(TEXT, top_k=2)
        client_after = time.monotonic() - start
    assert client_info.value.code is grpc.StatusCode.UNAVAILABLE
    assert client_after < SHORT_S / 2
    assert all(s == RESTARTING for s in _states(env))  # still down: the case under test

    # A call with time enough waits for a replica and is answered.
    with BertClient(env.server.address, timeout=LONG_S, retries=0) as client:
        start = time.monotonic()
        answer = client.fill_mask(TEXT, top_k=2)
        waited = time.monotonic() - start
    assert answer.results[0].masks
    wait_until(lambda: _all_back(env, pids), timeout=60)
    print(
        json.dumps(
            {
                "test": "all_restarting",
                "short_deadline_s": SHORT_S,
                "unavailable_after_s": round(raw_after, 3),
                "client_unavailable_after_s": round(client_after, 3),
                "pushback_ms": pushback,
                "long_call_answered_after_s": round(waited, 2),
            }
        )
    )
