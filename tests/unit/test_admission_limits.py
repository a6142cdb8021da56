"""Admission control: bounded, try-acquire, fail fast, with a retry hint.

The data plane runs for real (tokenizer, batchers, router, the fake backend's outputs) over one
in-process replica whose batches wait on a gate, so tests decide when the "GPU" is busy. No Ray.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from bertserve.server.checkpoint import resolve_checkpoint
from bertserve.server.dataplane import DataPlane
from bertserve.server.domain import (
    AnswerQuestionQuery,
    ClassifySequenceQuery,
    ClassifyTokensQuery,
    EmbedQuery,
    FillMaskAnswer,
    FillMaskQuery,
    NextSentenceQuery,
    RequestLimits,
    SequenceInput,
    Timing,
    TokenizeQuery,
)
from bertserve.server.errors import RETRY_PUSHBACK_KEY, InvalidInput, Overloaded, trailers_for
from bertserve.server.metrics import ADMISSION_REASONS, Metrics
from bertserve.server.models import ModelConfig, ModelRegistry, ServedModel
from bertserve.server.scheduling import admission as adm
from bertserve.server.scheduling.admission import Admission, AdmissionLimits, retry_hint_ms
from bertserve.server.scheduling.batcher import Batcher, BatchLimits
from bertserve.server.scheduling.router import Router
from bertserve.server.scheduling.work import WorkItem
from bertserve.server.servicer import BertServicer
from bertserve.server.tokenization import TextTokenizer
from bertserve.v1 import bert_service_pb2_grpc, fill_mask_pb2
from bertserve.workers.backends.fake import FakeBackend
from bertserve.workers.pool import ReplicaState
from bertserve.workers.protocol import Task
from bertserve.workers.spec import ReplicaSpec
from tests.support.echo_codec import EchoCodec

WAIT_S = 20.0
MASKED = "Paris is the [MASK] of France."


def _run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, WAIT_S))


async def _until(condition: Callable[[], bool]) -> None:
    """Yield to the event loop until `condition` holds (the wait_for in _run bounds it)."""
    while not condition():
        await asyncio.sleep(0)


# ---- a served model over one gated in-process replica -----------------------------------------


class GatedReplica:
    """The fake backend's outputs, computed when `gate` is open."""

    def __init__(self, backend: FakeBackend) -> None:
        self.replica_id = "bert-0"
        self.transport = "test"
        self.report = None
        self.state = ReplicaState.READY
        self.backend = backend
        self.gate = asyncio.Event()
        self.started = asyncio.Event()
        self.calls = 0

    @property
    def ready(self) -> bool:
        return True

    @property
    def alive(self) -> bool:
        return True

    async def call(self, method: str, *args: Any) -> Any:
        self.calls += 1
        self.started.set()
        await self.gate.wait()
        return getattr(self.backend, method)(*args)


class OnePool:
    def __init__(self, replica: GatedReplica) -> None:
        self._replicas = [replica]

    def replicas(self) -> Sequence[GatedReplica]:
        return self._replicas

    @property
    def ready_count(self) -> int:
        return 1

    def expected_ready_at(self) -> float:
        return math.inf  # never asked: the one replica is always ready

    def subscribe(self, callback: Callable[[], None]) -> None:
        pass  # the one replica never changes

    def set_load_view(self, load: Any) -> None:
        pass

    async def start(self, timeout_s: float) -> None:
        pass

    async def stop(self) -> None:
        pass


class Rig:
    def __init__(self, model: ServedModel, replica: GatedReplica, metrics: Metrics) -> None:
        self.model = model
        self.replica = replica
        self.metrics = metrics
        self.dp = DataPlane(ModelRegistry([model]))

    @property
    def fill_mask_batcher(self) -> Batcher:
        return self.model.batchers[Task.FILL_MASK]

    def rejections(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "bertserve_admission_rejections_total", {"model": "bert", "reason": reason}
        )
        return value or 0.0

    def fill_mask(self, text: str = MASKED) -> asyncio.Task[FillMaskAnswer]:
        return asyncio.create_task(self.dp.fill_mask(FillMaskQuery((text,), top_k=2)))


async def _rig(checkpoint: Path, limits: AdmissionLimits, *, batches_per_replica: int = 1) -> Rig:
    ckpt = resolve_checkpoint(str(checkpoint))
    config = ModelConfig(
        name="bert",
        checkpoint=ckpt,
        device="cpu",
        dtype="float32",
        limits=RequestLimits(max_inputs=8, max_text_chars=10_000, max_top_k=10, max_sequence_length=128),
        batch_limits=BatchLimits(max_batch_size=8, max_batch_tokens=4096, max_wait_s=0.0, max_queued=100),
        batches_per_replica=batches_per_replica,
        tasks=tuple(Task),
        labels=("A", "B", "C", "D"),  # the fake backend's four logits
        admission_limits=limits,
    )
    replica = GatedReplica(FakeBackend(ReplicaSpec("bert", str(checkpoint), backend="fake")))
    metrics = Metrics()
    model = ServedModel(config, TextTokenizer(ckpt.files_dir, 128), OnePool(replica), metrics)  # type: ignore[arg-type]
    await model.start(1.0)
    return Rig(model, replica, metrics)


TASK_CALLS: dict[str, Callable[[DataPlane], Awaitable[Any]]] = {
    "fill_mask": lambda dp: dp.fill_mask(FillMaskQuery((MASKED,))),
    "next_sentence": lambda dp: dp.next_sentence(NextSentenceQuery((("A dog.", "It barks."),))),
    "classify_sequence": lambda dp: dp.classify_sequence(ClassifySequenceQuery((SequenceInput("Nice."),))),
    "classify_tokens": lambda dp: dp.classify_tokens(ClassifyTokensQuery(("Angela went to Paris.",))),
    "answer_question": lambda dp: dp.answer_question(
        AnswerQuestionQuery((("Where?", "The tower is in Paris."),))
    ),
    "embed": lambda dp: dp.embed(EmbedQuery(("some text",))),
}


@pytest.mark.parametrize("task", sorted(TASK_CALLS))
def test_every_replica_task_is_rejected_at_once_past_the_inflight_limit(
    tiny_checkpoint: Path, task: str
) -> None:
    async def main() -> None:
        rig = await _rig(tiny_checkpoint, AdmissionLimits(max_inflight=1, max_queued_tokens=0))
        rig.replica.gate.set()
        held = rig.model.admission.try_acquire()  # another request is in flight
        with pytest.raises(Overloaded, match="in flight") as info:
            await TASK_CALLS[task](rig.dp)
        assert info.value.retry_after_ms is not None
        assert adm.MIN_RETRY_MS <= info.value.retry_after_ms <= adm.MAX_RETRY_MS
        assert rig.replica.calls == 0 and all(b.queued == 0 for b in rig.model.batchers.values())
        assert rig.rejections("inflight") == 1
        # Tokenize never reaches a replica: it needs no permit.
        await rig.dp.tokenize(TokenizeQuery(("hello",)))
        held.release()
        await TASK_CALLS[task](rig.dp)  # the permit came back: the next request is answered
        assert rig.model.admission.inflight == 0
        await rig.model.stop()

    _run(main())


def test_in_flight_requests_finish_while_the_one_past_the_limit_fails_and_never_queues(
    tiny_checkpoint: Path,
) -> None:
    async def main() -> None:
        rig = await _rig(tiny_checkpoint, AdmissionLimits(max_inflight=2, max_queued_tokens=0))
        first = rig.fill_mask()
        await rig.replica.started.wait()  # computing
        second = rig.fill_mask()
        await _until(lambda: rig.fill_mask_batcher.queued == 1)  # queued behind it
        with pytest.raises(Overloaded):
            await rig.dp.fill_mask(FillMaskQuery((MASKED,)))
        assert rig.fill_mask_batcher.queued == 1 and rig.replica.calls == 1
        rig.replica.gate.set()
        for done in await asyncio.gather(first, second):
            assert len(done.results[0].masks[0].candidates) == 2
        assert rig.model.admission.inflight == 0
        assert (await rig.fill_mask()).results  # after the burst, the next one is answered
        await rig.model.stop()

    _run(main())


def test_queued_token_limit_admits_into_empty_queues_only_when_the_limit_is_one(
    tiny_checkpoint: Path,
) -> None:
    async def main() -> None:
        rig = await _rig(tiny_checkpoint, AdmissionLimits(max_inflight=0, max_queued_tokens=1))
        running = rig.fill_mask()
        await rig.replica.started.wait()
        queued = rig.fill_mask()  # the queue is empty: admitted although longer than 1 token
        await _until(lambda: rig.fill_mask_batcher.queued == 1)
        tokens = rig.model.admission.queued_tokens
        assert tokens > 1
        # Any task of the model counts the same queued tokens.
        with pytest.raises(Overloaded, match="queues hold") as info:
            await rig.dp.embed(EmbedQuery(("x",)))
        assert info.value.retry_after_ms is not None
        assert rig.model.batchers[Task.EMBED].queued == 0
        assert rig.rejections("queued_tokens") == 1 and rig.rejections("inflight") == 0
        rig.replica.gate.set()
        await asyncio.gather(running, queued)
        assert rig.model.admission.queued_tokens == 0 and rig.model.admission.inflight == 0
        await rig.model.stop()

    _run(main())


def test_requests_that_fit_under_the_token_limit_share_the_queue(tiny_checkpoint: Path) -> None:
    async def main() -> None:
        tokenizer = TextTokenizer(resolve_checkpoint(str(tiny_checkpoint)).files_dir, 128)
        (encoded,) = tokenizer.encode([MASKED], truncate=False)
        rig = await _rig(
            tiny_checkpoint, AdmissionLimits(max_inflight=0, max_queued_tokens=2 * encoded.length)
        )
        running = rig.fill_mask()
        await rig.replica.started.wait()
        waiting = [rig.fill_mask(), rig.fill_mask()]
        await _until(lambda: rig.fill_mask_batcher.queued == 2)
        assert rig.model.admission.queued_tokens == 2 * encoded.length
        with pytest.raises(Overloaded):
            await rig.dp.fill_mask(FillMaskQuery((MASKED,)))
        rig.replica.gate.set()
        await asyncio.gather(running, *waiting)
        await rig.model.stop()

    _run(main())


def test_permits_come_back_after_errors_and_cancellations(tiny_checkpoint: Path) -> None:
    async def main() -> None:
        rig = await _rig(tiny_checkpoint, AdmissionLimits(max_inflight=2, max_queued_tokens=1))
        admission = rig.model.admission
        with pytest.raises(InvalidInput):
            await rig.dp.fill_mask(FillMaskQuery(("no mask here",)))
        assert admission.inflight == 0
        running = rig.fill_mask()
        await rig.replica.started.wait()
        queued = rig.fill_mask()
        await _until(lambda: rig.fill_mask_batcher.queued == 1)
        assert admission.inflight == 2 and admission.queued_tokens > 0
        # A cancelled queued request leaves the queue at once: its tokens stop counting.
        queued.cancel()
        await asyncio.gather(queued, return_exceptions=True)
        assert admission.inflight == 1 and admission.queued_tokens == 0
        assert rig.fill_mask_batcher.queued == 0
        # A cancelled computing request gives its permit back too.
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        assert admission.inflight == 0
        rig.replica.gate.set()
        assert (await rig.fill_mask()).results
        assert admission.inflight == 0
        await rig.model.stop()

    _run(main())


def test_admission_gauges_are_read_at_scrape_time(tiny_checkpoint: Path) -> None:
    async def main() -> None:
        rig = await _rig(tiny_checkpoint, AdmissionLimits(max_inflight=4, max_queued_tokens=0))
        running = rig.fill_mask()
        await rig.replica.started.wait()
        queued = rig.fill_mask()
        await _until(lambda: rig.fill_mask_batcher.queued == 1)
        get = rig.metrics.registry.get_sample_value
        assert get("bertserve_inflight_requests", {"model": "bert"}) == 2
        assert get("bertserve_queued_tokens", {"model": "bert"}) == rig.model.admission.queued_tokens > 0
        for reason in ADMISSION_REASONS:
            assert get("bertserve_admission_rejections_total", {"model": "bert", "reason": reason}) == 0
        rig.replica.gate.set()
        await asyncio.gather(running, queued)
        assert get("bertserve_inflight_requests", {"model": "bert"}) == 0
        await rig.model.stop()

    _run(main())


# ---- the admission object alone ---------------------------------------------------------------


def _admission(limits: AdmissionLimits, queued: list[int] | None = None) -> Admission:
    box = queued if queued is not None else [0]
    return Admission(limits, queued_tokens=lambda: box[0], retry_after_ms=lambda: 123)


def test_try_acquire_never_waits_and_a_permit_is_released_exactly_once() -> None:
    admission = _admission(AdmissionLimits(max_inflight=2, max_queued_tokens=0))
    a = admission.try_acquire()
    with admission.try_acquire():
        with pytest.raises(Overloaded) as info:
            admission.try_acquire()
        assert info.value.retry_after_ms == 123
    assert admission.inflight == 1
    a.release()
    a.release()  # idempotent: the count does not go below what is held
    assert admission.inflight == 0
    with pytest.raises(RuntimeError), admission.try_acquire():
        raise RuntimeError("the request failed")
    assert admission.inflight == 0


def test_zero_limits_are_unlimited() -> None:
    admission = _admission(AdmissionLimits(max_inflight=0, max_queued_tokens=0), [10**9])
    permits = [admission.try_acquire() for _ in range(5000)]
    permits[0].admit_tokens(10**6)
    assert admission.inflight == 5000


def test_token_check_counts_what_is_queued_plus_the_request() -> None:
    queued = [0]
    admission = _admission(AdmissionLimits(max_inflight=0, max_queued_tokens=100), queued)
    with admission.try_acquire() as permit:
        permit.admit_tokens(500)  # empty queues: admitted, so a long input can still run
        queued[0] = 60
        permit.admit_tokens(40)  # 60 + 40 fits exactly
        with pytest.raises(Overloaded, match="limit of 100"):
            permit.admit_tokens(41)


def test_retry_hint_is_the_work_ahead_over_the_measured_rate_and_stays_bounded() -> None:
    # More cases, and the Pushback that feeds it: tests/unit/test_retry_hint.py.
    assert retry_hint_ms(0, None) == adm.DEFAULT_RETRY_MS
    assert retry_hint_ms(500, 1000.0) == 500
    assert retry_hint_ms(1, 1000.0) == adm.MIN_RETRY_MS
    assert retry_hint_ms(10**9, 1.0) == adm.MAX_RETRY_MS


def test_reasons_of_the_module_are_the_metric_label_values() -> None:
    assert {adm.REASON_INFLIGHT, adm.REASON_QUEUED_TOKENS, adm.REASON_QUEUED_INPUTS} == set(ADMISSION_REASONS)


# ---- the batcher's own bound ------------------------------------------------------------------


def test_batcher_queue_full_carries_a_retry_hint_and_is_counted() -> None:
    async def main() -> None:
        metrics = Metrics()
        loop = asyncio.get_running_loop()

        def item(n: int) -> WorkItem:
            return WorkItem(tuple([1] * n), tuple([0] * n), None, loop.create_future())

        batcher = Batcher(
            "bert:fill_mask",
            EchoCodec(),
            Router(OnePool(GatedReplica(None))),  # type: ignore[arg-type]
            BatchLimits(max_batch_size=4, max_batch_tokens=512, max_wait_s=0.0, max_queued=2),
            metrics.batcher("bert", "fill_mask"),
        )
        batcher.submit([item(3), item(5)])  # not started: the items stay queued
        assert batcher.queued_tokens == 8
        with pytest.raises(Overloaded, match="queue is full") as info:
            batcher.submit([item(1)])
        # Nothing computed yet (no rate): the default hint.
        assert info.value.retry_after_ms == retry_hint_ms(8, None) == adm.DEFAULT_RETRY_MS
        assert (
            metrics.registry.get_sample_value(
                "bertserve_admission_rejections_total", {"model": "bert", "reason": "queued_inputs"}
            )
            == 1
        )
        await batcher.stop()
        assert batcher.queued_tokens == 0

    _run(main())


# ---- the servicer: trailer on unary calls, an error per stream request ------------------------


class OverloadedDataPlane:
    """'full' texts are rejected with a retry hint, 'bare' ones without; others are answered."""

    registry: Any = None

    async def fill_mask(self, query: FillMaskQuery, deadline: float | None = None) -> FillMaskAnswer:
        if query.texts == ("full",):
            raise Overloaded("the model has 1 requests in flight, its limit; retry later", retry_after_ms=250)
        if query.texts == ("bare",):
            raise Overloaded("the request queue is full")
        await asyncio.sleep(0)
        return FillMaskAnswer((), "bert", Timing(1, 2, 3, 6))


def test_trailers_for_only_an_overloaded_with_a_hint() -> None:
    assert trailers_for(Overloaded("x", retry_after_ms=42)) == ((RETRY_PUSHBACK_KEY, "42"),)
    assert trailers_for(Overloaded("x")) == ()
    assert trailers_for(InvalidInput("x")) == ()


def test_unary_rejection_has_the_pushback_trailer_and_a_stream_rejection_its_own_error() -> None:
    async def main() -> None:
        metrics = Metrics()
        servicer = BertServicer(OverloadedDataPlane(), 4, metrics)  # type: ignore[arg-type]
        server = grpc.aio.server()
        bert_service_pb2_grpc.add_BertServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = bert_service_pb2_grpc.BertServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.FillMask(fill_mask_pb2.FillMaskRequest(texts=["full"]))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert (RETRY_PUSHBACK_KEY, "250") in tuple(info.value.trailing_metadata() or ())
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.FillMask(fill_mask_pb2.FillMaskRequest(texts=["bare"]))
            assert RETRY_PUSHBACK_KEY not in dict(info.value.trailing_metadata() or ())

            texts = ["ok [MASK]", "full", "ok [MASK]", "full", "ok [MASK]"] * 20
            requests = [
                fill_mask_pb2.FillMaskStreamRequest(
                    request_id=str(i), request=fill_mask_pb2.FillMaskRequest(texts=[t])
                )
                for i, t in enumerate(texts)
            ]
            replies = [r async for r in stub.FillMaskStream(iter(requests))]
        await server.stop(None)
        by_id = {r.request_id: r for r in replies}
        assert len(replies) == len(by_id) == len(texts)
        for i, text in enumerate(texts):
            reply = by_id[str(i)]
            if text == "full":
                assert reply.error.code_name == "RESOURCE_EXHAUSTED"
            else:
                assert reply.HasField("response")
        assert servicer.stream_pending == 0
        assert metrics.registry.get_sample_value("bertserve_stream_pending_requests") == 0

    _run(main())


# ---- settings ---------------------------------------------------------------------------------


def test_limits_are_per_model_settings_from_flags_the_environment_and_the_config_file(tmp_path: Path) -> None:
    from bertserve.server.config_file import ConfigError, model_entries
    from bertserve.server.settings import from_sources

    defaults = from_sources({}, env={})
    assert (defaults.max_inflight_requests, defaults.max_queued_tokens) == (1024, 262_144)
    given = from_sources({"max_inflight_requests": 5}, env={"BERTSERVE_MAX_QUEUED_TOKENS": "77"})
    assert (given.max_inflight_requests, given.max_queued_tokens) == (5, 77)
    with pytest.raises(ValueError, match="--max-inflight-requests must not be negative"):
        from_sources({"max_inflight_requests": -1}, env={})

    config = tmp_path / "bertserve.yaml"
    config.write_text(
        "models:\n  - {checkpoint: a, max_inflight_requests: 3, max_queued_tokens: 0}\n  - {checkpoint: b}\n"
    )
    first, second = model_entries(from_sources({"config": str(config)}, env={}))
    assert (first.settings.max_inflight_requests, first.settings.max_queued_tokens) == (3, 0)
    assert (second.settings.max_inflight_requests, second.settings.max_queued_tokens) == (1024, 262_144)
    config.write_text("models:\n  - {checkpoint: a, max_queued_tokens: -5}\n")
    with pytest.raises(ConfigError, match="max-queued-tokens"):
        model_entries(from_sources({"config": str(config)}, env={}))
