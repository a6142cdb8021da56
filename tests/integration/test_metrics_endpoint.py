"""`--metrics-port`: a real server answers GET /metrics, and its counters follow the traffic.

The fake backend keeps it fast (it still loads the tiny checkpoint's tokenizer); its 5 ms
per batch shows up as replica busy time.
"""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bertserve_client import BertClient, BertServeError
from tests.support.probes import fake_server_args
from tests.support.server import RunningServer, error_lines, run_serve, serving

pytestmark = pytest.mark.integration

MODEL = "tiny"


@pytest.fixture(scope="module")
def metrics_server(tiny_checkpoint: Path) -> Iterator[tuple[RunningServer, int]]:
    args = fake_server_args(
        tiny_checkpoint,
        replicas=1,
        delay_ms=5,
        model_name=MODEL,
    )
    with serving(args, metrics=True) as running:
        yield running, running.metrics_port


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of GET /metrics, keyed by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _get(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_endpoint_counts_requests_batches_tokens_and_busy_time(
    metrics_server: tuple[RunningServer, int],
) -> None:
    server, port = metrics_server
    before = _scrape(port)
    fm = {"model": MODEL, "task": "fill_mask"}
    assert _get(before, "bertserve_replicas", model=MODEL, state="ready") == 1
    assert _get(before, "bertserve_queue_depth", **fm) == 0

    with BertClient(server.address, timeout=30) as client:
        for _ in range(3):
            client.fill_mask(["Paris is the [MASK] of France.", "A [MASK] barked."], top_k=2)
        with pytest.raises(BertServeError) as bad:
            client.fill_mask("no mask in this text")
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(BertServeError) as unknown:
            client.fill_mask("A [MASK].", model="no-such-model")
        assert unknown.value.code == grpc.StatusCode.NOT_FOUND
        results = list(client.fill_mask_stream(["The [MASK] sat.", "no mask here", "A [MASK] barked."]))
        assert sorted(r.ok for r in results) == [False, True, True]  # in finishing order

    after = _scrape(port)

    def delta(name: str, **labels: str) -> float:
        return _get(after, name, **labels) - _get(before, name, **labels)

    # Requests by status: the model that answered, or "" when none was chosen.
    assert delta("bertserve_requests_total", rpc="FillMask", model=MODEL, code="OK") == 3
    assert delta("bertserve_requests_total", rpc="FillMask", model=MODEL, code="INVALID_ARGUMENT") == 1
    assert delta("bertserve_requests_total", rpc="FillMask", model="", code="NOT_FOUND") == 1
    assert delta("bertserve_requests_total", rpc="FillMaskStream", model=MODEL, code="OK") == 2
    assert delta("bertserve_requests_total", rpc="FillMaskStream", model=MODEL, code="INVALID_ARGUMENT") == 1
    assert delta("bertserve_request_duration_seconds_count", rpc="FillMask", model=MODEL) == 4
    assert delta("bertserve_request_duration_seconds_sum", rpc="FillMask", model=MODEL) > 0

    # Batches: 8 sequences reached the replica (3 x 2 unary, 2 streamed).
    assert delta("bertserve_batch_size_count", **fm) > 0
    assert delta("bertserve_batch_size_sum", **fm) == 8
    assert delta("bertserve_batch_tokens_count", **fm) == delta("bertserve_batch_size_count", **fm)
    real = delta("bertserve_tokens_total", **fm, kind="real")
    padded = delta("bertserve_tokens_total", **fm, kind="padded")
    assert 0 < real <= padded
    assert delta("bertserve_batch_tokens_sum", **fm) == padded
    busy = delta("bertserve_replica_busy_seconds_total", model=MODEL, replica=f"{MODEL}-0")
    assert busy >= 0.005 * delta("bertserve_batch_size_count", **fm) * 0.9
    assert _get(after, "bertserve_batch_retries_total", **fm) == 0
    assert _get(after, "bertserve_queue_depth", **fm) == 0


def test_a_taken_metrics_port_stops_start_up_with_one_line(tiny_checkpoint: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        done = run_serve("--model", str(tiny_checkpoint), "--backend", "fake", "--metrics-port", str(port))
    assert done.returncode == 1
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and f"cannot bind the metrics port 127.0.0.1:{port}" in lines[0]
    assert "Traceback" not in done.stderr
