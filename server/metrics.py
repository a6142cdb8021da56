"""Prometheus metrics of one server, served over HTTP on `--metrics-port` (docs/metrics.md).

Each server has its own `CollectorRegistry` (never the process-wide default), so several
servers, or tests, can live in one process. The servicer records one observation per request
(`observe_request`); each batcher records its batches through a `BatcherMetrics` bound to its
model and task; queue depths and replica states are read when Prometheus scrapes.

Label values come from the server, never from a client: `model` is a served model's name
(empty when a request failed before a model was chosen), `rpc` a method of the service and
`code` a gRPC status name, so the number of series stays bounded.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# `*_created` series double the output and no dashboard here uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Server-side latency of one request: 1 ms … 30 s.
REQUEST_SECONDS_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
# Sequences per batch (--max-batch-size defaults to 32).
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# Padded tokens per batch (--max-batch-tokens defaults to 16384).
BATCH_TOKENS_BUCKETS = tuple(float(2**i) for i in range(4, 17))  # 16 … 65536
REPLICA_STATES = ("starting", "ready", "restarting", "dead")
# Why admission turned a request away (server/scheduling/admission.py): max_inflight_requests,
# max_queued_tokens, or a batcher's own queue bound (max_queued_requests).
ADMISSION_REASONS = ("inflight", "queued_tokens", "queued_inputs")
# Why a call was refused before any servicer ran (server/security.py, server/drain.py).
REJECTED_CALL_REASONS = ("missing_token", "invalid_token", "shutting_down")

# The model that is answering the current request: set by the model registry when it picks
# one, so that a request failing after that point (queue full, deadline, bad input for that
# model's limits) is still counted under its model. One value per asyncio task.
_current_model: contextvars.ContextVar[str] = contextvars.ContextVar("bertserve_model", default="")


def note_model(name: str) -> None:
    """Record the model chosen for the request running in this task (see `current_model`)."""
    _current_model.set(name)


def current_model() -> str:
    """The model chosen for the request running in this task, or "" when none was yet."""
    return _current_model.get()


def begin_request() -> None:
    """Forget any model noted earlier in this task: a new request starts."""
    _current_model.set("")


class BatcherMetrics:
    """What one batcher (one model, one task) reports: its batches and its retries."""

    def __init__(self, metrics: Metrics, model: str, task: str) -> None:
        self.model = model
        self.task = task
        # Children are created now, so every series exists (at 0) from start-up on.
        self._size = metrics.batch_size.labels(model, task)
        self._tokens = metrics.batch_tokens.labels(model, task)
        self._real = metrics.tokens.labels(model, task, "real")
        self._padded = metrics.tokens.labels(model, task, "padded")
        self._retries = metrics.batch_retries.labels(model, task)
        self._queue_full = metrics.admission_rejections.labels(model, "queued_inputs")
        self._busy = metrics.replica_busy
        self._batches = metrics.replica_batches

    def batch_done(
        self,
        *,
        size: int,
        real_tokens: int,
        padded_tokens: int,
        replica: str,
        compute_s: float,
        transport: str = "ray",
    ) -> None:
        """A batch came back: `size` sequences, `real_tokens` input tokens, `padded_tokens`
        (size x longest) tokens computed, `compute_s` seconds of model time on `replica`, which
        it reached by `transport` ("channel" or "ray")."""
        self._batches.labels(self.model, replica, transport).inc()
        self._size.observe(size)
        self._tokens.observe(padded_tokens)
        self._real.inc(real_tokens)
        self._padded.inc(padded_tokens)
        if compute_s > 0:
            self._busy.labels(self.model, replica).inc(compute_s)

    def retry(self) -> None:
        """A batch is sent again after its replica failed."""
        self._retries.inc()

    def queue_full(self) -> None:
        """A request was turned away: this batcher's queue holds max_queued_requests inputs."""
        self._queue_full.inc()


class AdmissionMetrics:
    """What one model's admission reports: its rejections by reason."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        # Every reason's series exists (at 0) from start-up on.
        self._rejections = {r: metrics.admission_rejections.labels(model, r) for r in ADMISSION_REASONS}

    def rejected(self, reason: str) -> None:
        self._rejections[reason].inc()


class _StateCollector(Collector):
    """Gauges read at scrape time: queued inputs per batcher, replicas per state, admitted
    requests and queued tokens per model, unanswered stream requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: list[tuple[str, str, Callable[[], int]]] = []
        self._replicas: list[tuple[str, Callable[[], Iterable[str]]]] = []
        self._admission: list[tuple[str, Callable[[], int], Callable[[], int]]] = []
        self._streams: list[Callable[[], int]] = []

    def add_queue(self, model: str, task: str, depth: Callable[[], int]) -> None:
        with self._lock:
            self._queues.append((model, task, depth))

    def add_replicas(self, model: str, states: Callable[[], Iterable[str]]) -> None:
        with self._lock:
            self._replicas.append((model, states))

    def add_admission(self, model: str, inflight: Callable[[], int], tokens: Callable[[], int]) -> None:
        with self._lock:
            self._admission.append((model, inflight, tokens))

    def add_streams(self, pending: Callable[[], int]) -> None:
        with self._lock:
            self._streams.append(pending)

    def describe(self) -> Iterable[Metric]:
        return list(self._families(read=False))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(read=True))

    def _families(self, *, read: bool) -> Iterator[Metric]:
        with self._lock:
            queues = list(self._queues)
            replicas = list(self._replicas)
            admission = list(self._admission)
            streams = list(self._streams)
        depth = GaugeMetricFamily(
            "bertserve_queue_depth",
            "Inputs waiting in the batcher queue of a model's task.",
            labels=("model", "task"),
        )
        per_state = GaugeMetricFamily(
            "bertserve_replicas",
            "Replicas of a model in each state (starting, pending, ready, draining, restarting, dead).",
            labels=("model", "state"),
        )
        inflight = GaugeMetricFamily(
            "bertserve_inflight_requests",
            "Requests admitted to a model and not yet answered (unary calls and stream requests).",
            labels=("model",),
        )
        queued_tokens = GaugeMetricFamily(
            "bertserve_queued_tokens",
            "Tokens of the inputs waiting in a model's batcher queues.",
            labels=("model",),
        )
        pending = GaugeMetricFamily(
            "bertserve_stream_pending_requests",
            "Stream requests read by the server and not yet answered, over every open stream.",
        )
        if read:
            for model, read_inflight, read_tokens in admission:
                inflight.add_metric((model,), float(read_inflight()))
                queued_tokens.add_metric((model,), float(read_tokens()))
            pending.add_metric((), float(sum(read() for read in streams)))
            for model, task, read_depth in queues:
                depth.add_metric((model, task), float(read_depth()))
            for model, read_states in replicas:
                counts = dict.fromkeys(REPLICA_STATES, 0)
                for state in read_states():
                    counts[state] = counts.get(state, 0) + 1
                for state, n in counts.items():
                    per_state.add_metric((model, state), float(n))
        yield depth
        yield per_state
        yield inflight
        yield queued_tokens
        yield pending


class Metrics:
    """The metrics of one server, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "bertserve_requests_total",
            "Requests answered: every unary call and every request inside a stream, by gRPC status.",
            ("rpc", "model", "code"),
            registry=r,
        )
        self.request_duration = Histogram(
            "bertserve_request_duration_seconds",
            "Server-side latency of one request (a unary call, or one request of a stream), seconds.",
            ("rpc", "model"),
            buckets=REQUEST_SECONDS_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "bertserve_batch_size",
            "Sequences per batch sent to a replica.",
            ("model", "task"),
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "bertserve_batch_tokens",
            "Padded tokens per batch (batch size x longest sequence).",
            ("model", "task"),
            buckets=BATCH_TOKENS_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "bertserve_tokens_total",
            "Tokens computed: kind=real sums the input lengths, kind=padded the padded batch tokens.",
            ("model", "task", "kind"),
            registry=r,
        )
        self.replica_busy = Counter(
            "bertserve_replica_busy_seconds_total",
            "Model compute time a replica reported for its batches, seconds.",
            ("model", "replica"),
            registry=r,
        )
        self.replica_batches = Counter(
            "bertserve_replica_batches_total",
            "Batches a replica computed, by how they reached it: transport=channel (the same-node "
            "Unix socket) or ray (a Ray actor call).",
            ("model", "replica", "transport"),
            registry=r,
        )
        self.batch_retries = Counter(
            "bertserve_batch_retries_total",
            "Batches sent again after their replica failed.",
            ("model", "task"),
            registry=r,
        )
        self.admission_rejections = Counter(
            "bertserve_admission_rejections_total",
            "Requests turned away with RESOURCE_EXHAUSTED before any work, by the limit they hit.",
            ("model", "reason"),
            registry=r,
        )
        self.rejected_calls = Counter(
            "bertserve_rejected_calls_total",
            "Calls refused before any servicer ran: reason=missing_token or invalid_token "
            "(UNAUTHENTICATED), shutting_down (UNAVAILABLE, held during a drain).",
            ("reason",),
            registry=r,
        )
        for reason in REJECTED_CALL_REASONS:
            self.rejected_calls.labels(reason)
        self._state = _StateCollector()
        r.register(self._state)
        self._http: tuple[WSGIServer, threading.Thread] | None = None

    # ---- recording -----------------------------------------------------------------------
    def observe_request(self, rpc: str, model: str, code: str, seconds: float) -> None:
        self.requests.labels(rpc, model, code).inc()
        self.request_duration.labels(rpc, model).observe(seconds)

    def call_rejected(self, reason: str) -> None:
        """A call refused before any servicer ran (one of REJECTED_CALL_REASONS)."""
        self.rejected_calls.labels(reason).inc()

    def batcher(self, model: str, task: str) -> BatcherMetrics:
        return BatcherMetrics(self, model, task)

    def admission(self, model: str) -> AdmissionMetrics:
        return AdmissionMetrics(self, model)

    def watch_admission(self, model: str, inflight: Callable[[], int], tokens: Callable[[], int]) -> None:
        """Report bertserve_inflight_requests{model} and bertserve_queued_tokens{model} at each scrape."""
        self._state.add_admission(model, inflight, tokens)

    def watch_streams(self, pending: Callable[[], int]) -> None:
        """Add `pending()` to bertserve_stream_pending_requests at each scrape."""
        self._state.add_streams(pending)

    def watch_queue(self, model: str, task: str, depth: Callable[[], int]) -> None:
        """Report `depth()` as bertserve_queue_depth{model, task} at each scrape."""
        self._state.add_queue(model, task, depth)

    def watch_replicas(self, model: str, states: Callable[[], Iterable[str]]) -> None:
        """Count `states()` (one state name per replica) as bertserve_replicas{model, state}."""
        self._state.add_replicas(model, states)

    # ---- exposition ----------------------------------------------------------------------
    def exposition(self) -> str:
        """The registry in the Prometheus text format (what GET /metrics answers)."""
        return generate_latest(self.registry).decode()

    def serve(self, host: str, port: int) -> None:
        """Serve GET /metrics on host:port from a background thread. Raises OSError when the
        address cannot be bound."""
        self._http = start_http_server(port, addr=host, registry=self.registry)

    @property
    def port(self) -> int:
        """The bound port (0 when not serving)."""
        return 0 if self._http is None else int(self._http[0].server_port)

    def close(self) -> None:
        if self._http is None:
            return
        server, thread = self._http
        self._http = None
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
