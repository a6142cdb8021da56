"""Keep-warm (server/keep_warm.py): loopback health checks only while a lone request is in flight,
against a real grpc.aio server whose health service counts the checks it answers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bertserve.server.keep_warm import KeepWarm, loopback_target
from bertserve.server.scheduling.admission import Admission, AdmissionLimits
from bertserve.server.settings import Settings
from tests.support.aio_server import local_aio_server

INTERVAL_S = 0.002


class CountingHealth(health_pb2_grpc.HealthServicer):
    def __init__(self) -> None:
        self.checks = 0

    async def Check(self, request: Any, context: Any) -> Any:
        self.checks += 1
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


async def _with_server(body: Any) -> None:
    health = CountingHealth()
    async with local_aio_server(lambda s: health_pb2_grpc.add_HealthServicer_to_server(health, s)) as target:
        await asyncio.wait_for(body(health, target), 20)


async def _until(condition: Any) -> None:
    while not condition():
        await asyncio.sleep(0.001)


def test_pings_only_while_one_request_is_in_flight_and_sleeps_otherwise() -> None:
    inflight = [0]

    async def body(health: CountingHealth, target: str) -> None:
        warm = KeepWarm(target, lambda: inflight[0], INTERVAL_S)
        warm.start()
        warm.wake()  # woken with nothing in flight: goes back to sleep
        await asyncio.sleep(20 * INTERVAL_S)
        assert health.checks == warm.pings == 0

        inflight[0] = 1
        warm.wake()
        await _until(lambda: health.checks >= 5)

        inflight[0] = 3  # busy: warm anyway, and the CPU belongs to the replicas
        await asyncio.sleep(5 * INTERVAL_S)
        busy = health.checks
        await asyncio.sleep(20 * INTERVAL_S)
        assert health.checks == busy

        inflight[0] = 1  # back to one: pings again without a new wake()
        await _until(lambda: health.checks >= busy + 3)

        inflight[0] = 0  # idle: the loop stops and waits for the next wake()
        await asyncio.sleep(5 * INTERVAL_S)
        idle = health.checks
        await asyncio.sleep(20 * INTERVAL_S)
        assert health.checks == idle == warm.pings
        await warm.stop()

    asyncio.run(_with_server(body))


def test_a_failing_ping_is_ignored_and_counted() -> None:
    async def body() -> None:
        pinged: list[int] = []
        # Nothing listens there: every check fails at once with UNAVAILABLE.
        warm = KeepWarm("127.0.0.1:1", lambda: 1, INTERVAL_S, on_ping=lambda: pinged.append(1))
        warm.start()
        warm.wake()
        await asyncio.wait_for(_until(lambda: len(pinged) >= 3), 20)
        await warm.stop()
        assert warm.pings == len(pinged)

    asyncio.run(body())


def test_admission_wakes_keep_warm_on_its_first_request_only() -> None:
    admission = Admission(AdmissionLimits(max_inflight=0, max_queued_tokens=0), lambda: 0, lambda: 10)
    woken: list[int] = []
    admission.on_busy = lambda: woken.append(admission.inflight)
    with admission.try_acquire(), admission.try_acquire():
        assert woken == [1]
    with admission.try_acquire():
        assert woken == [1, 1]


@pytest.mark.parametrize(
    ("host", "target"),
    [
        ("127.0.0.1", "127.0.0.1:9"),
        ("0.0.0.0", "127.0.0.1:9"),
        ("localhost", "127.0.0.1:9"),
        ("::", "[::1]:9"),
        ("::1", "[::1]:9"),
        ("10.1.2.3", "10.1.2.3:9"),
    ],
)
def test_loopback_target_of_the_bound_host(host: str, target: str) -> None:
    assert loopback_target(host, 9) == target


def test_keep_warm_is_off_by_default_and_cannot_be_negative() -> None:
    assert Settings().keep_warm_ms == 0
    Settings(keep_warm_ms=0).validate()
    with pytest.raises(ValueError, match="keep-warm-ms"):
        Settings(keep_warm_ms=-1).validate()


def test_a_non_positive_interval_is_refused() -> None:
    with pytest.raises(ValueError):
        KeepWarm("127.0.0.1:9", lambda: 0, 0)
