"""Admission on a real server: exact rejection counts under a held backend, the retry trailer, and
a stream written as fast as possible (in the style of Triton's queue tests).

The fake backend holds its one replica busy for a set time per batch; the client runs with
`retries=0` so that every rejection is counted. The limits:

- `--max-inflight-requests 1 --max-queued-tokens 1`: one request in the model at a time (and it
  is queued only into empty queues): of 12 concurrent calls exactly 1 is answered, 11 get
  RESOURCE_EXHAUSTED.
- `--max-inflight-requests 0 --max-queued-tokens 1 --batches-per-replica 1`: unlimited in flight,
  but a request is queued only into empty queues: with one batch computing and one request
  queued, every further call is rejected for its tokens.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bertserve.v1 import fill_mask_pb2
from bertserve_client import BertClient, BertServeError
from bertserve_client.streaming import StreamResult
from tests.support.probes import fake_server_args, rss_mib, wait_until
from tests.support.server import RunningServer, serving

pytestmark = pytest.mark.integration

MODEL = "tiny"
TEXT = "Paris is the [MASK] of France."
PUSHBACK = "grpc-retry-pushback-ms"
BATCH_MS = 1000
MAX_STREAM_INFLIGHT = 128  # BertServicer's per-stream bound


def _args(checkpoint: Path, *limits: str) -> list[str]:
    """One replica of the fake backend, holding each batch BATCH_MS, with these admission limits."""
    return fake_server_args(checkpoint, *limits, replicas=1, delay_ms=BATCH_MS, model_name=MODEL)


@pytest.fixture(scope="module")
def one_and_one(tiny_checkpoint: Path) -> Iterator[tuple[RunningServer, int]]:
    limits = ("--max-inflight-requests", "1", "--max-queued-tokens", "1")
    with serving(_args(tiny_checkpoint, *limits), metrics=True) as running:
        yield running, running.metrics_port


@pytest.fixture(scope="module")
def tokens_only(tiny_checkpoint: Path) -> Iterator[tuple[RunningServer, int]]:
    limits = ("--max-inflight-requests", "0", "--max-queued-tokens", "1", "--batches-per-replica", "1")
    with serving(_args(tiny_checkpoint, *limits), metrics=True) as running:
        yield running, running.metrics_port


def _sample(port: int, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def _concurrent_fill_masks(address: str, n: int) -> list[fill_mask_pb2.FillMaskResponse | BertServeError]:
    """`n` FillMask calls released together from `n` threads, over one warm channel."""
    barrier = threading.Barrier(n)
    with BertClient(address, timeout=60, retries=0) as client:
        client.list_models()  # connected before the burst

        def call(_: int) -> fill_mask_pb2.FillMaskResponse | BertServeError:
            barrier.wait()
            try:
                return client.fill_mask(TEXT, top_k=3)
            except BertServeError as error:
                return error

        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(call, range(n)))


def _pushback_ms(error: BertServeError) -> int:
    cause = error.__cause__
    assert isinstance(cause, grpc.Call)
    values = [v for k, v in (cause.trailing_metadata() or ()) if k == PUSHBACK]
    assert len(values) == 1, cause.trailing_metadata()
    return int(values[0])


def _assert_answered(response: fill_mask_pb2.FillMaskResponse) -> None:
    assert response.model == MODEL
    (result,) = response.results
    (mask,) = result.masks
    assert len(mask.candidates) == 3


def test_twelve_concurrent_calls_with_limits_of_one_and_one_get_exactly_eleven_rejections(
    one_and_one: tuple[RunningServer, int],
) -> None:
    server, metrics_port = one_and_one
    before = _sample(metrics_port, "bertserve_admission_rejections_total", model=MODEL, reason="inflight")
    start = time.monotonic()

    outcomes = _concurrent_fill_masks(server.address, 12)

    answered = [o for o in outcomes if not isinstance(o, BertServeError)]
    rejected = [o for o in outcomes if isinstance(o, BertServeError)]
    assert len(answered) == 1 and len(rejected) == 11, [getattr(o, "code", "ok") for o in outcomes]
    _assert_answered(answered[0])
    for error in rejected:
        assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert 10 <= _pushback_ms(error) <= 5000
    assert time.monotonic() - start < 3 * BATCH_MS / 1000  # rejected at once, not after a wait
    after = _sample(metrics_port, "bertserve_admission_rejections_total", model=MODEL, reason="inflight")
    assert after - before == 11
    # Every permit came back: the next request is answered.
    with BertClient(server.address, timeout=60, retries=0) as client:
        _assert_answered(client.fill_mask(TEXT, top_k=3))
    assert _sample(metrics_port, "bertserve_inflight_requests", model=MODEL) == 0


def test_with_one_batch_computing_and_one_queued_every_further_call_is_rejected_for_tokens(
    tokens_only: tuple[RunningServer, int],
) -> None:
    server, metrics_port = tokens_only

    def inflight() -> float:
        return _sample(metrics_port, "bertserve_inflight_requests", model=MODEL)

    def queued_tokens() -> float:
        return _sample(metrics_port, "bertserve_queued_tokens", model=MODEL)

    rejections = "bertserve_admission_rejections_total"
    before = _sample(metrics_port, rejections, model=MODEL, reason="queued_tokens")
    with BertClient(server.address, timeout=60, retries=0) as client, ThreadPoolExecutor(2) as pool:
        computing = pool.submit(client.fill_mask, TEXT, top_k=3)
        # Sent to the replica; then one waits behind it: the replica takes one batch at a time.
        wait_until(lambda: inflight() == 1 and queued_tokens() == 0, timeout=30, interval=0.01)
        queued = pool.submit(client.fill_mask, TEXT, top_k=3)
        wait_until(lambda: queued_tokens() > 0, timeout=30, interval=0.01)

        outcomes = _concurrent_fill_masks(server.address, 10)

        assert all(isinstance(o, BertServeError) for o in outcomes), outcomes
        for error in outcomes:
            assert isinstance(error, BertServeError)
            assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "tokens" in error.details
            assert 10 <= _pushback_ms(error) <= 5000
        _assert_answered(computing.result(timeout=30))
        _assert_answered(queued.result(timeout=30))
        after = _sample(metrics_port, rejections, model=MODEL, reason="queued_tokens")
        assert after - before == 10
        _assert_answered(client.fill_mask(TEXT, top_k=3))


def test_a_stream_written_as_fast_as_possible_gets_one_answer_per_request_with_bounded_state(
    one_and_one: tuple[RunningServer, int],
) -> None:
    """5,000 requests on one stream while the held backend computes: each gets exactly one
    response, answered or RESOURCE_EXHAUSTED; the server never holds more than
    max_stream_inflight stream requests, nor more admitted requests than its limit (1)."""
    server, metrics_port = one_and_one
    n = 5000
    rss_before = rss_mib(server.process.pid)
    peak = {"pending": 0.0, "inflight": 0.0, "queue": 0.0, "rss": rss_before}
    samples = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal samples
        while not done.is_set():
            peak["pending"] = max(peak["pending"], _sample(metrics_port, "bertserve_stream_pending_requests"))
            peak["inflight"] = max(peak["inflight"], _sample(metrics_port, "bertserve_inflight_requests"))
            peak["queue"] = max(peak["queue"], _sample(metrics_port, "bertserve_queue_depth", model=MODEL))
            peak["rss"] = max(peak["rss"], rss_mib(server.process.pid))
            samples += 1

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    results: list[StreamResult[fill_mask_pb2.FillMaskResponse]] = []
    try:
        with BertClient(server.address, timeout=300, retries=0) as client:
            results = list(client.fill_mask_stream((TEXT for _ in range(n)), top_k=3))
    finally:
        done.set()
        watcher.join(30)

    ids = [r.request_id for r in results]
    assert len(ids) == n and set(ids) == {str(i) for i in range(n)}
    answered = [r for r in results if r.ok]
    rejected = [r for r in results if not r.ok]
    assert answered, "the held replica answers some of the stream"
    for r in answered:
        assert r.response is not None
        _assert_answered(r.response)
    assert {r.error.code_name for r in rejected if r.error is not None} == {"RESOURCE_EXHAUSTED"}
    assert samples > 0
    assert peak["pending"] <= MAX_STREAM_INFLIGHT
    assert peak["inflight"] <= 1 and peak["queue"] <= 1
    assert peak["rss"] - rss_before < 200, peak  # MiB
    assert _sample(metrics_port, "bertserve_stream_pending_requests") == 0
    assert _sample(metrics_port, "bertserve_inflight_requests", model=MODEL) == 0
    assert os.path.exists(f"/proc/{server.process.pid}")  # still serving
