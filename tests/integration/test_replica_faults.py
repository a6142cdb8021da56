"""Replica faults: replicas killed (SIGKILL, by the pid ReplicaInfo reports) while idle, in the
middle of batches under load, and past their restart budget.

Guarantees: a killed replica is restarted by Ray and serves again, health follows (NOT_SERVING
only while no replica of a model is ready); under load every request gets exactly one answer,
OK or UNAVAILABLE (a batch whose replica died is retried once, elsewhere when another replica is
alive), none is lost or answered twice and nothing hangs; once every replica is dead for good,
health is NOT_SERVING and requests fail fast with UNAVAILABLE.

`pytest tests/integration/test_replica_faults.py -q -s` prints a JSON summary line per test.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from bertserve.v1 import bert_service_pb2_grpc, fill_mask_pb2, models_pb2, tokenize_pb2
from tests.support.probes import (
    HealthWatch,
    fake_server_args,
    kill_replica,
    metric,
    model_info,
    pid_alive,
    wait_until,
)
from tests.support.server import Connected, connected, serving

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
READY = models_pb2.REPLICA_STATE_READY
DEAD = models_pb2.REPLICA_STATE_DEAD
TEXTS = ("Paris is the [MASK] of France.", "The [MASK] walked home.", "A [MASK] and a [MASK] met.")

# The load of the mid-batch test: streams x requests each, plus unary workers x calls each.
STREAMS, PER_STREAM = 4, 400
UNARY_WORKERS, PER_WORKER = 8, 60
TOTAL = STREAMS * PER_STREAM + UNARY_WORKERS * PER_WORKER


@pytest.fixture(scope="module")
def env(tiny_checkpoint: Path) -> Iterator[Connected]:
    """Two replicas, fake batches of 20 ms, up to 8 requests a batch, 3 restarts each."""
    args = fake_server_args(
        tiny_checkpoint,
        "--max-batch-size",
        "8",
        "--max-wait-ms",
        "5",
        "--max-restarts",
        "3",
        replicas=2,
        delay_ms=20,
    )
    with connected(args, metrics=True) as env:
        yield env


def _request(i: int) -> fill_mask_pb2.FillMaskRequest:
    return fill_mask_pb2.FillMaskRequest(texts=[TEXTS[i % len(TEXTS)]], top_k=2)


def _all_ready(channel: grpc.Channel, pids_before: list[int]) -> list[models_pb2.ReplicaInfo] | None:
    replicas = list(model_info(channel).replicas)
    fresh = all(r.state == READY and r.pid not in pids_before for r in replicas)
    return replicas if fresh else None


def test_replicas_killed_while_idle_restart_serve_again_and_health_recovers(env: Connected) -> None:
    stub = bert_service_pb2_grpc.BertServiceStub(env.channel)
    before = list(model_info(env.channel).replicas)
    pids = [r.pid for r in before]
    watch = HealthWatch(env.channel)
    try:
        watch.wait_for(SERVING)
        start = time.monotonic()
        for pid in pids:
            kill_replica(pid)
        # The pool notices on its next probe (every second): the probe fails while Ray restarts the
        # actor, or, when Ray restarted it first, answers from a new process. Either way the
        # restart is counted and the replica serves again.
        replicas = wait_until(lambda: _all_ready(env.channel, pids), timeout=60)
        restarted = time.monotonic() - start
        seen = watch.seen()
        if NOT_SERVING in seen:  # both were out of routing at once
            watch.wait_for(SERVING, after=seen.index(NOT_SERVING), timeout=60)
    finally:
        watch.close()
    assert [r.restarts for r in replicas] == [r.restarts + 1 for r in before]
    assert not any(pid_alive(pid) for pid in pids)
    assert watch.seen()[-1] == SERVING and env.server.health() == SERVING

    # Both restarted replicas compute again. Requests go out four at a time: one at a time, they
    # would all stay on the replica that finished last (the router keeps a lone client there).
    sequences = [r.sequences for r in replicas]
    for i in range(40):
        calls = [stub.FillMask.future(_request(4 * i + k), timeout=10) for k in range(4)]
        assert all(call.result().results[0].masks for call in calls)
        now = [r.sequences for r in model_info(env.channel).replicas]
        if all(n > s for n, s in zip(now, sequences, strict=True)):
            break
    else:
        raise AssertionError(f"a restarted replica got no work: {sequences} -> {now}")
    print(
        json.dumps(
            {
                "test": "replicas_killed_while_idle",
                "replicas_killed": len(pids),
                "restarted_and_ready_after_s": round(restarted, 2),
                "health_seen": [health_pb2.HealthCheckResponse.ServingStatus.Name(s) for s in watch.seen()],
            }
        )
    )


async def _load(address: str, on_progress: asyncio.Queue[int]) -> tuple[Counter[str], dict[str, str], float]:
    """Drive TOTAL FillMask requests over STREAMS streams and UNARY_WORKERS unary workers.

    Returns how many answers each request id got, each id's status name, and the wall time."""
    answers: Counter[str] = Counter()
    codes: dict[str, str] = {}
    done = 0

    def record(request_id: str, code: str) -> None:
        nonlocal done
        answers[request_id] += 1
        codes[request_id] = code
        done += 1
        on_progress.put_nowait(done)

    async with grpc.aio.insecure_channel(address) as channel:
        stub = bert_service_pb2_grpc.BertServiceStub(channel)

        async def stream(s: int) -> None:
            async def requests() -> AsyncIterator[fill_mask_pb2.FillMaskStreamRequest]:
                for i in range(PER_STREAM):
                    yield fill_mask_pb2.FillMaskStreamRequest(request_id=f"s{s}-{i}", request=_request(i))

            call = stub.FillMaskStream(requests(), timeout=120)
            async for reply in call:
                record(reply.request_id, reply.error.code_name if reply.HasField("error") else "OK")
            assert await call.code() == grpc.StatusCode.OK

        async def unary(w: int) -> None:
            for i in range(PER_WORKER):
                try:
                    await stub.FillMask(_request(i), timeout=60)
                    code = "OK"
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                record(f"u{w}-{i}", code)

        start = time.monotonic()
        await asyncio.gather(*(stream(s) for s in range(STREAMS)), *(unary(w) for w in range(UNARY_WORKERS)))
        return answers, codes, time.monotonic() - start


def test_replica_killed_mid_batch_under_load_loses_no_request(env: Connected) -> None:
    retries_before = metric(env.metrics_port, "bertserve_batch_retries_total")
    victim = model_info(env.channel).replicas[0]
    killed_at: list[int] = []

    async def main() -> tuple[Counter[str], dict[str, str], float]:
        progress: asyncio.Queue[int] = asyncio.Queue()

        async def killer() -> None:
            while await progress.get() < TOTAL // 4:
                pass
            kill_replica(victim.pid)  # the server is busy: both replicas run batches
            killed_at.append(TOTAL // 4)

        kill = asyncio.create_task(killer())
        try:
            return await asyncio.wait_for(_load(env.server.address, progress), timeout=180)
        finally:
            kill.cancel()

    answers, codes, elapsed = asyncio.run(main())

    assert killed_at, "the replica was not killed during the load"
    expected = {f"s{s}-{i}" for s in range(STREAMS) for i in range(PER_STREAM)}
    expected |= {f"u{w}-{i}" for w in range(UNARY_WORKERS) for i in range(PER_WORKER)}
    assert set(answers) == expected, "lost or unknown request ids"
    assert set(answers.values()) == {1}, "a request was answered twice"
    outcome = Counter(codes.values())
    assert set(outcome) <= {"OK", "UNAVAILABLE"}, outcome
    retries = metric(env.metrics_port, "bertserve_batch_retries_total") - retries_before
    assert retries >= 1, "no batch was in flight on the killed replica"

    # The killed replica comes back; nothing is left admitted, queued or pending.
    replicas = wait_until(lambda: _all_ready(env.channel, [victim.pid]), timeout=60)
    assert replicas[0].restarts == victim.restarts + 1
    assert env.server.health() == SERVING
    wait_until(
        lambda: (
            metric(env.metrics_port, "bertserve_inflight_requests") == 0
            and metric(env.metrics_port, "bertserve_queue_depth") == 0
            and metric(env.metrics_port, "bertserve_stream_pending_requests") == 0
        )
    )
    print(
        json.dumps(
            {
                "test": "replica_killed_mid_batch",
                "requests": TOTAL,
                "streams": STREAMS,
                "unary_workers": UNARY_WORKERS,
                "answered_once": sum(1 for n in answers.values() if n == 1),
                "ok": outcome["OK"],
                "unavailable": outcome["UNAVAILABLE"],
                "lost": len(expected - set(answers)),
                "duplicated": sum(1 for n in answers.values() if n > 1),
                "batches_retried": int(retries),
                "wall_s": round(elapsed, 2),
                "requests_per_s": round(TOTAL / elapsed),
            }
        )
    )


def test_all_replicas_dead_past_their_budget_turn_health_not_serving_and_fail_fast(
    tiny_checkpoint: Path,
) -> None:
    args = fake_server_args(tiny_checkpoint, "--max-restarts", "0", replicas=2, delay_ms=300)
    with serving(args, metrics=True) as running:
        port = running.metrics_port
        with running.channel() as channel:
            stub = bert_service_pb2_grpc.BertServiceStub(channel)
            pids = [r.pid for r in model_info(channel).replicas]
            watch = HealthWatch(channel)
            try:
                watch.wait_for(SERVING)
                inflight = stub.FillMask.future(_request(0), timeout=30)
                wait_until(lambda: metric(port, "bertserve_inflight_requests") == 1)
                killed = time.monotonic()
                for pid in pids:
                    kill_replica(pid)
                with pytest.raises(grpc.RpcError) as info:
                    inflight.result()
                inflight_failed_s = time.monotonic() - killed
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
                not_serving_s = watch.wait_for(NOT_SERVING, timeout=30) - killed
            finally:
                watch.close()
            wait_until(lambda: all(r.state == DEAD for r in model_info(channel).replicas))
            assert running.health() == NOT_SERVING

            latencies = []
            for i in range(10):
                start = time.monotonic()
                with pytest.raises(grpc.RpcError) as info:
                    stub.FillMask(_request(i), timeout=30)
                latencies.append(time.monotonic() - start)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "no replica" in (info.value.details() or "")
            start = time.monotonic()
            stream = [
                fill_mask_pb2.FillMaskStreamRequest(request_id=f"r{i}", request=_request(i))
                for i in range(10)
            ]
            replies = list(stub.FillMaskStream(iter(stream), timeout=30))
            stream_s = time.monotonic() - start
            assert sorted(r.request_id for r in replies) == sorted(r.request_id for r in stream)
            assert {r.error.code_name for r in replies} == {"UNAVAILABLE"}
            # The front end itself still answers what needs no replica.
            assert stub.Tokenize(tokenize_pb2.TokenizeRequest(texts=["still here"]), timeout=10).results
        assert max(latencies) < 1.0 and stream_s < 1.0 and inflight_failed_s < 1.0
        print(
            json.dumps(
                {
                    "test": "all_replicas_dead",
                    "replicas_killed": len(pids),
                    "inflight_request_failed_after_s": round(inflight_failed_s, 3),
                    "not_serving_after_s": round(not_serving_s, 2),
                    "unary_fail_fast_max_s": round(max(latencies), 3),
                    "stream_of_10_fail_fast_s": round(stream_s, 3),
                }
            )
        )
