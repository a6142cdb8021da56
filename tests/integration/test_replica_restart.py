"""A crashed replica is restarted by Ray and serves again; health follows the replicas."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bertserve.v1 import models_pb2
from bertserve_client import BertClient, BertServeError
from tests.support.probes import kill_replica
from tests.support.server import RunningServer, serving

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def one_replica(tiny_checkpoint: Path) -> Iterator[RunningServer]:
    args = ["--model", str(tiny_checkpoint), "--replicas", "1", "--ray-num-cpus", "1", "--max-restarts", "1"]
    with serving(args) as running:
        yield running


def _wait_for(statuses: Iterator[health_pb2.HealthCheckResponse], wanted: int) -> None:
    for reply in statuses:
        if reply.status == wanted:
            return
    raise AssertionError(f"health stream ended before status {wanted}")


def test_killed_replica_restarts_then_spent_budget_turns_health_not_serving(
    one_replica: RunningServer,
) -> None:
    with (
        BertClient(one_replica.address, timeout=30) as client,
        grpc.insecure_channel(one_replica.address) as ch,
    ):
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""), timeout=120)
        _wait_for(watch, SERVING)
        first_pid = client.model_info().replicas[0].pid
        assert first_pid > 0

        kill_replica(first_pid)
        _wait_for(watch, NOT_SERVING)
        _wait_for(watch, SERVING)
        replica = client.model_info().replicas[0]
        assert replica.state == models_pb2.REPLICA_STATE_READY
        assert replica.restarts == 1 and replica.pid not in (0, first_pid)
        assert len(client.fill_mask("Paris is the [MASK] of France.").results[0].masks) == 1

        kill_replica(replica.pid)
        _wait_for(watch, NOT_SERVING)
        watch.cancel()
        assert client.model_info().replicas[0].state == models_pb2.REPLICA_STATE_DEAD
        with pytest.raises(BertServeError) as info:
            client.fill_mask("Paris is the [MASK] of France.", timeout=10)
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
