"""The same-node direct channel (workers/channel.py) through a real server and Ray.

Guarantees: replicas on the front end's node take every batch over the channel (the metrics say
so per replica), with the same answers as Ray actor calls (`--no-direct-channel`); a replica
killed mid-batch loses no request (the batch is retried on the other replica), and once Ray has
restarted it, it takes batches over a new channel to its new process."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bertserve.v1 import bert_service_pb2_grpc, fill_mask_pb2, models_pb2
from tests.support.probes import fake_server_args, kill_replica, metric, model_info, wait_until
from tests.support.server import RunningServer, start_server

pytestmark = pytest.mark.integration

TEXTS = [f"Sentence {i} has a [MASK] in it." for i in range(16)]
BATCHES = "bertserve_replica_batches_total"
READY = models_pb2.REPLICA_STATE_READY


def _server(checkpoint: Path, *extra: str, delay_ms: float = 20) -> tuple[RunningServer, int]:
    server = start_server(
        fake_server_args(checkpoint, "--max-batch-size", "1", *extra, delay_ms=delay_ms), metrics=True
    )
    return server, server.metrics_port


def _answers(server: RunningServer, texts: list[str]) -> list[list[tuple[str, float]]]:
    with server.channel() as channel:
        stub = bert_service_pb2_grpc.BertServiceStub(channel)

        def one(text: str) -> list[tuple[str, float]]:
            reply = stub.FillMask(fill_mask_pb2.FillMaskRequest(texts=[text], top_k=3), timeout=30)
            return [(c.token, round(c.score, 6)) for c in reply.results[0].masks[0].candidates]

        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(one, texts))


@pytest.fixture(scope="module")
def ray_answers(tiny_checkpoint: Path) -> Iterator[tuple[list[list[tuple[str, float]]], float, float]]:
    server, port = _server(tiny_checkpoint, "--no-direct-channel")
    try:
        answers = _answers(server, TEXTS)
        yield answers, metric(port, BATCHES, transport="ray"), metric(port, BATCHES, transport="channel")
    finally:
        server.stop()


def test_without_the_channel_every_batch_is_a_ray_call(
    ray_answers: tuple[list[list[tuple[str, float]]], float, float],
) -> None:
    _, ray_batches, channel_batches = ray_answers
    assert ray_batches == len(TEXTS) and channel_batches == 0


def test_same_node_replicas_take_batches_over_the_channel_with_the_same_answers(
    tiny_checkpoint: Path, ray_answers: tuple[list[list[tuple[str, float]]], float, float]
) -> None:
    server, port = _server(tiny_checkpoint)
    try:
        assert _answers(server, TEXTS) == ray_answers[0]
        assert metric(port, BATCHES, transport="channel") == len(TEXTS)
        assert metric(port, BATCHES, transport="ray") == 0
        # Four concurrent clients kept both replicas busy: each has its own channel.
        with server.channel() as channel:
            replicas = [r.replica_id for r in model_info(channel).replicas]
        assert len(replicas) == 2
        for replica in replicas:
            assert metric(port, BATCHES, replica=replica, transport="channel") > 0
    finally:
        server.stop()


def test_a_replica_killed_mid_batch_loses_nothing_and_comes_back_on_a_new_channel(
    tiny_checkpoint: Path,
) -> None:
    server, port = _server(tiny_checkpoint, delay_ms=300)
    try:
        with server.channel() as channel:
            victim = model_info(channel).replicas[0]
            stub = bert_service_pb2_grpc.BertServiceStub(channel)

            def one(text: str) -> int:
                reply = stub.FillMask(fill_mask_pb2.FillMaskRequest(texts=[text]), timeout=60)
                return len(reply.results)

            with ThreadPoolExecutor(4) as pool:
                pending = [pool.submit(one, t) for t in TEXTS[:4]]
                # All four are admitted: both replicas compute one (300 ms) and hold the next.
                wait_until(lambda: metric(port, "bertserve_inflight_requests") >= 4)
                kill_replica(victim.pid)
                assert [f.result() for f in pending] == [1, 1, 1, 1]

            def restarted() -> bool:
                r = next(r for r in model_info(channel).replicas if r.replica_id == victim.replica_id)
                return r.state == READY and r.pid != victim.pid

            wait_until(restarted, timeout=60, interval=0.2)
            before = metric(port, BATCHES, replica=victim.replica_id, transport="channel")
            with ThreadPoolExecutor(4) as pool:
                assert list(pool.map(one, TEXTS[4:12])) == [1] * 8
        assert metric(port, BATCHES, replica=victim.replica_id, transport="channel") > before
        assert metric(port, BATCHES, transport="ray") == 0
    finally:
        server.stop()
