"""Prometheus metrics: what the batcher and the servicer record, and the text Prometheus scrapes.

No Ray: the batcher runs with fake replicas, the servicer with a fake data plane.
"""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from collections.abc import Sequence
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bertserve.server.app import Server, StartupError
from bertserve.server.domain import FillMaskAnswer, FillMaskQuery, Timing
from bertserve.server.errors import InvalidInput, Overloaded
from bertserve.server.metrics import Metrics, note_model
from bertserve.server.scheduling.batcher import Batcher, BatchLimits
from bertserve.server.scheduling.router import Router
from bertserve.server.scheduling.work import WorkItem
from bertserve.server.servicer import BertServicer
from bertserve.server.settings import Settings, from_sources
from bertserve.v1 import bert_service_pb2_grpc, fill_mask_pb2
from bertserve.workers.errors import ReplicaFailed
from tests.support.echo_codec import EchoCodec

# docs/metrics.md: name → (type, labels)
DOCUMENTED = {
    "bertserve_requests_total": ("counter", ("rpc", "model", "code")),
    "bertserve_request_duration_seconds": ("histogram", ("rpc", "model")),
    "bertserve_queue_depth": ("gauge", ("model", "task")),
    "bertserve_batch_size": ("histogram", ("model", "task")),
    "bertserve_batch_tokens": ("histogram", ("model", "task")),
    "bertserve_tokens_total": ("counter", ("model", "task", "kind")),
    "bertserve_replica_busy_seconds_total": ("counter", ("model", "replica")),
    "bertserve_batch_retries_total": ("counter", ("model", "task")),
    "bertserve_replicas": ("gauge", ("model", "state")),
    "bertserve_admission_rejections_total": ("counter", ("model", "reason")),
    "bertserve_inflight_requests": ("gauge", ("model",)),
    "bertserve_queued_tokens": ("gauge", ("model",)),
    "bertserve_stream_pending_requests": ("gauge", ()),
    "bertserve_rejected_calls_total": ("counter", ("reason",)),
}


# ---- fakes -----------------------------------------------------------------------------------


class Output(list[Any]):
    """A batch output that reports its compute time, as every backend output does."""

    def __init__(self, items: Sequence[Any], compute_us: int) -> None:
        super().__init__(items)
        self.compute_us = compute_us


class FakeReplica:
    def __init__(self, replica_id: str, *, compute_us: int = 2500, fail: bool = False) -> None:
        self.replica_id = replica_id
        self.transport = "test"
        self.compute_us = compute_us
        self.fail = fail
        self.dead = False

    @property
    def ready(self) -> bool:
        return not self.dead

    @property
    def alive(self) -> bool:
        return not self.dead

    async def call(self, method: str, batch: list[tuple[int, ...]]) -> Any:
        if self.fail:
            self.dead = True
            raise ReplicaFailed("killed")
        return Output(batch, self.compute_us)


class Pool:
    def __init__(self, *replicas: FakeReplica) -> None:
        self._replicas = list(replicas)

    def replicas(self) -> Sequence[FakeReplica]:
        return self._replicas


def _item(length: int) -> WorkItem:
    loop = asyncio.get_running_loop()
    return WorkItem(tuple([1] * length), tuple([0] * length), None, loop.create_future())


def _limits() -> BatchLimits:
    return BatchLimits(max_batch_size=8, max_batch_tokens=1024, max_wait_s=0.05, max_queued=100)


def _value(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- batcher ---------------------------------------------------------------------------------


def test_batcher_records_batch_size_tokens_and_replica_busy_time() -> None:
    async def main() -> Metrics:
        metrics = Metrics()
        replica = FakeReplica("bert-0", compute_us=2500)
        batcher = Batcher(
            "bert:fill_mask",
            EchoCodec(),
            Router(Pool(replica)),
            _limits(),
            metrics.batcher("bert", "fill_mask"),
        )
        items = [_item(n) for n in (3, 5, 4)]
        batcher.submit(items)  # before the batcher runs: one batch of three
        batcher.start()
        await asyncio.gather(*(it.future for it in items))
        await batcher.stop()
        assert batcher.stats.batches == 1
        return metrics

    metrics = _run(main())
    labels = {"model": "bert", "task": "fill_mask"}
    assert _value(metrics, "bertserve_batch_size_count", **labels) == 1
    assert _value(metrics, "bertserve_batch_size_sum", **labels) == 3
    assert _value(metrics, "bertserve_batch_tokens_sum", **labels) == 15  # 3 x longest (5)
    assert _value(metrics, "bertserve_tokens_total", **labels, kind="real") == 12
    assert _value(metrics, "bertserve_tokens_total", **labels, kind="padded") == 15
    busy = _value(metrics, "bertserve_replica_busy_seconds_total", model="bert", replica="bert-0")
    assert busy == pytest.approx(0.0025)
    assert _value(metrics, "bertserve_batch_retries_total", **labels) == 0


def test_batcher_counts_a_retry_after_a_replica_fails() -> None:
    async def main() -> Metrics:
        metrics = Metrics()
        bad, good = FakeReplica("m-0", fail=True), FakeReplica("m-1")
        batcher = Batcher(
            "m:embed", EchoCodec(), Router(Pool(bad, good)), _limits(), metrics.batcher("m", "embed")
        )
        batcher.start()
        item = _item(4)
        batcher.submit([item])
        result = await item.future
        assert result.replica_id == "m-1"
        await batcher.stop()
        return metrics

    metrics = _run(main())
    assert _value(metrics, "bertserve_batch_retries_total", model="m", task="embed") == 1
    assert _value(metrics, "bertserve_replica_busy_seconds_total", model="m", replica="m-1") > 0
    assert (
        metrics.registry.get_sample_value(
            "bertserve_replica_busy_seconds_total", {"model": "m", "replica": "m-0"}
        )
        is None
    )


def test_queue_depth_and_replica_states_are_read_at_scrape_time() -> None:
    async def main() -> None:
        metrics = Metrics()
        batcher = Batcher("bert:embed", EchoCodec(), Router(Pool(FakeReplica("r"))), _limits())
        metrics.watch_queue("bert", "embed", lambda: batcher.queued)
        states = ["ready", "ready", "restarting"]
        metrics.watch_replicas("bert", lambda: states)
        assert _value(metrics, "bertserve_queue_depth", model="bert", task="embed") == 0
        batcher.submit([_item(2), _item(3)])  # not started: the items stay queued
        assert _value(metrics, "bertserve_queue_depth", model="bert", task="embed") == 2
        assert _value(metrics, "bertserve_replicas", model="bert", state="ready") == 2
        assert _value(metrics, "bertserve_replicas", model="bert", state="restarting") == 1
        assert _value(metrics, "bertserve_replicas", model="bert", state="dead") == 0
        assert (
            metrics.registry.get_sample_value("bertserve_replicas", {"model": "bert", "state": "starting"})
            == 0
        )
        states[2] = "dead"
        assert _value(metrics, "bertserve_replicas", model="bert", state="dead") == 1
        await batcher.stop()

    _run(main())


# ---- servicer --------------------------------------------------------------------------------


class FakeDataPlane:
    """FillMask: 'bad' is invalid before a model is chosen; 'full' fails after model 'bert' was
    chosen; anything else is answered by model 'bert'."""

    registry: Any = None

    async def fill_mask(self, query: FillMaskQuery, deadline: float | None = None) -> FillMaskAnswer:
        if query.texts == ("bad",):
            raise InvalidInput("texts[0] has no mask token")
        note_model("bert")
        if query.texts == ("full",):
            raise Overloaded("the request queue is full")
        await asyncio.sleep(0)
        return FillMaskAnswer((), "bert", Timing(1, 2, 3, 6))


def _stream_req(i: int, text: str) -> fill_mask_pb2.FillMaskStreamRequest:
    return fill_mask_pb2.FillMaskStreamRequest(
        request_id=f"r{i}", request=fill_mask_pb2.FillMaskRequest(texts=[text])
    )


def test_servicer_counts_each_unary_call_and_stream_request_by_code_and_model() -> None:
    async def main() -> Metrics:
        metrics = Metrics()
        server = grpc.aio.server()
        servicer = BertServicer(FakeDataPlane(), metrics=metrics)  # type: ignore[arg-type]
        bert_service_pb2_grpc.add_BertServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = bert_service_pb2_grpc.BertServiceStub(channel)
            for _ in range(3):
                await stub.FillMask(fill_mask_pb2.FillMaskRequest(texts=["a [MASK]"]))
            for text, code in (
                ("bad", grpc.StatusCode.INVALID_ARGUMENT),
                ("full", grpc.StatusCode.RESOURCE_EXHAUSTED),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.FillMask(fill_mask_pb2.FillMaskRequest(texts=[text]))
                assert info.value.code() == code
            texts = ["a [MASK]", "bad", "a [MASK]", "full", "a [MASK]"]
            replies = [
                r async for r in stub.FillMaskStream(iter([_stream_req(i, t) for i, t in enumerate(texts)]))
            ]
            assert len(replies) == len(texts)
        await server.stop(None)
        return metrics

    metrics = _run(main())

    def requests(rpc: str, model: str, code: str) -> float:
        return _value(metrics, "bertserve_requests_total", rpc=rpc, model=model, code=code)

    assert requests("FillMask", "bert", "OK") == 3
    assert requests("FillMask", "", "INVALID_ARGUMENT") == 1
    assert requests("FillMask", "bert", "RESOURCE_EXHAUSTED") == 1
    assert requests("FillMaskStream", "bert", "OK") == 3
    assert requests("FillMaskStream", "", "INVALID_ARGUMENT") == 1
    assert requests("FillMaskStream", "bert", "RESOURCE_EXHAUSTED") == 1
    assert _value(metrics, "bertserve_request_duration_seconds_count", rpc="FillMask", model="bert") == 4
    assert _value(metrics, "bertserve_request_duration_seconds_count", rpc="FillMask", model="") == 1
    assert (
        _value(metrics, "bertserve_request_duration_seconds_count", rpc="FillMaskStream", model="bert") == 4
    )
    assert _value(metrics, "bertserve_request_duration_seconds_sum", rpc="FillMask", model="bert") > 0


# ---- exposition and HTTP ---------------------------------------------------------------------


def test_exposition_has_every_documented_metric_with_its_labels() -> None:
    async def main() -> Metrics:
        metrics = Metrics()
        metrics.batcher("bert", "fill_mask").batch_done(
            size=2, real_tokens=7, padded_tokens=8, replica="bert-0", compute_s=0.01
        )
        metrics.batcher("bert", "fill_mask").retry()
        metrics.observe_request("FillMask", "bert", "OK", 0.02)
        metrics.watch_queue("bert", "fill_mask", lambda: 0)
        metrics.watch_replicas("bert", lambda: ["ready"])
        metrics.admission("bert").rejected("inflight")
        metrics.watch_admission("bert", lambda: 3, lambda: 120)
        metrics.watch_streams(lambda: 7)
        return metrics

    text = _run(main()).exposition()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, (kind, labels) in DOCUMENTED.items():
        family = families[name.removesuffix("_total")]
        assert family.type == kind, name
        assert family.documentation, name
        assert family.samples, name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == set(labels), sample
    assert 'bertserve_request_duration_seconds_bucket{le="0.001",model="bert",rpc="FillMask"}' in text
    assert 'bertserve_request_duration_seconds_bucket{le="30.0",model="bert",rpc="FillMask"}' in text
    assert "_created" not in text


def test_two_servers_in_one_process_keep_separate_registries() -> None:
    a, b = Metrics(), Metrics()
    a.observe_request("Embed", "m", "OK", 0.1)
    assert (
        a.registry.get_sample_value("bertserve_requests_total", {"rpc": "Embed", "model": "m", "code": "OK"})
        == 1
    )
    assert (
        b.registry.get_sample_value("bertserve_requests_total", {"rpc": "Embed", "model": "m", "code": "OK"})
        is None
    )


def test_metrics_are_served_over_http_and_the_port_is_released_on_close() -> None:
    metrics = Metrics()
    metrics.observe_request("Tokenize", "bert", "OK", 0.001)
    port = _free_port()
    metrics.serve("127.0.0.1", port)
    try:
        assert metrics.port == port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            body = reply.read().decode()
        assert 'bertserve_requests_total{code="OK",model="bert",rpc="Tokenize"} 1.0' in body
    finally:
        metrics.close()
    assert metrics.port == 0
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", port))  # no longer listening


def test_a_taken_metrics_port_fails_start_up_with_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        server = Server(Settings(metrics_port=port))
        with pytest.raises(StartupError) as info:
            server._serve_metrics()
        server.metrics.close()
    message = str(info.value)
    assert f"cannot bind the metrics port 127.0.0.1:{port}" in message and "\n" not in message


def test_metrics_port_setting_comes_from_a_flag_or_the_environment_and_is_off_by_default() -> None:
    assert from_sources({}, env={}).metrics_port == 0
    assert from_sources({}, env={"BERTSERVE_METRICS_PORT": "9464"}).metrics_port == 9464
    assert from_sources({"metrics_port": 9000}, env={"BERTSERVE_METRICS_PORT": "9464"}).metrics_port == 9000
    with pytest.raises(ValueError, match=r"--metrics-port must be in 0\.\.65535"):
        from_sources({}, env={"BERTSERVE_METRICS_PORT": "70000"})
