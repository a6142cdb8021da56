"""SIGTERM drain without losing a call (server/drain.py): under load from closed-loop clients,
and while a replica is still warming up.

`pytest tests/integration/test_drain.py -q -s` prints a JSON line per test;
scripts/sigterm_under_load.py repeats the first test many times.
"""

from __future__ import annotations

import json
import re
import signal
import time
from concurrent.futures import Future
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from bertserve.v1 import bert_service_pb2_grpc, fill_mask_pb2
from tests.support.drain_load import sigterm_round
from tests.support.probes import fake_server_args, free_port, metric, wait_until
from tests.support.server import calling, start_server

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
GRACE_S = 10


def _event(log: str, name: str) -> dict[str, object]:
    for line in log.splitlines():
        if f'"event": "{name}"' in line:
            found: dict[str, object] = json.loads(line)
            return found
    raise AssertionError(f"no {name} event in the log:\n{log[-3000:]}")


def test_sigterm_under_load_answers_every_call_received_before_it_and_cancels_none(
    tiny_checkpoint: Path,
) -> None:
    """16 closed-loop unary clients (short and long texts) and 2 streams, no retries; two rounds.
    Calls started before the signal end OK, calls started after it end UNAVAILABLE, none ends
    CANCELLED or otherwise, streams end OK or UNAVAILABLE with every answer OK, exit 0."""
    rounds = []
    for _ in range(2):
        server = start_server(
            fake_server_args(
                tiny_checkpoint,
                "--max-wait-ms",
                "2",
                "--grace-period-s",
                str(GRACE_S),
                "--log-format",
                "json",
                delay_ms=20,
            )
        )
        result = sigterm_round(server, unary_clients=16, stream_clients=2)
        log = server.log()
        assert result.problems() == [], (result, log[-3000:])
        assert result.exit_after_s < GRACE_S
        drained = _event(log, "drained")
        assert drained["finished_in_grace_period"] is True
        rounds.append(
            {
                "unary": {f"{when}:{code}": n for (when, code), n in sorted(result.unary.items())},
                "streams": dict(result.stream_statuses),
                "stream_answers_ok": result.stream_answers_ok,
                "received_unread_at_signal": drained["calls_unread_at_signal"],
                "held_then_refused": drained["refused_while_draining"],
                "exit_code": result.exit_code,
                "exit_after_s": round(result.exit_after_s, 2),
            }
        )
    # The drain had work to do: calls were held and refused after the signal.
    assert sum(int(r["held_then_refused"]) for r in rounds) > 0  # type: ignore[call-overload]
    print(json.dumps({"test": "sigterm_under_load", "rounds": rounds}))


def _unary(stub: bert_service_pb2_grpc.BertServiceStub) -> str:
    try:
        stub.FillMask(fill_mask_pb2.FillMaskRequest(texts=["Paris is the [MASK] of France."]), timeout=60)
        return "OK"
    except grpc.RpcError as exc:
        return str(exc.code().name)


def test_sigterm_while_a_replica_is_still_warming_drains_and_exits_0(tiny_checkpoint: Path) -> None:
    """Health is SERVING with the first warm replica while the second still loads: a SIGTERM then
    drains like any other (Watch gets NOT_SERVING and ends, calls in flight answered, exit 0)
    instead of Ray's handler exiting with code 15."""
    metrics_port = free_port()
    server = start_server(
        fake_server_args(
            tiny_checkpoint,
            "--fake-load-ms",
            "600000",  # the second replica never finishes loading within the test
            "--max-batch-size",
            "2",
            "--metrics-port",
            str(metrics_port),
            "--grace-period-s",
            str(GRACE_S),
            "--log-format",
            "json",
            delay_ms=300,
        ),
        every_replica=False,  # replica 2 never warms up
    )
    with calling(server, 6) as callers:
        stub = bert_service_pb2_grpc.BertServiceStub(callers.channel)
        watch, pool = callers.watch, callers.pool
        watch.wait_for(SERVING)
        assert '"event": "serving"' not in server.log()  # start-up still waits for replica 2
        calls: list[Future[str]] = [pool.submit(_unary, stub) for _ in range(6)]
        wait_until(lambda: metric(metrics_port, "bertserve_inflight_requests") >= 6, timeout=30)
        sigterm = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        watch.wait_for(NOT_SERVING, timeout=10)
        assert watch.wait_ended(timeout=10) == grpc.StatusCode.OK
        codes = [f.result(timeout=60) for f in calls]
        code = server.process.wait(60)
        exited = time.monotonic() - sigterm
    log = server.log()
    assert code == 0, log[-3000:]
    assert codes == ["OK"] * 6, codes
    assert exited < GRACE_S
    assert _event(log, "shutdown_requested_during_startup")
    assert not re.search(r"Traceback", log), log[-3000:]
    print(
        json.dumps(
            {
                "test": "sigterm_while_warming",
                "calls_in_flight": 6,
                "answered": codes.count("OK"),
                "exit_code": code,
                "exited_after_s": round(exited, 2),
            }
        )
    )
