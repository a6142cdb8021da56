"""The retry hint of a rejection (`grpc-retry-pushback-ms`): the work ahead of the rejected call
over the rate the model's replicas got through recently, with the calls rejected before it that
have not come back yet counted as work ahead. A fake clock drives every test: no wall-clock time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from bertserve.server.errors import Overloaded
from bertserve.server.scheduling import admission as adm
from bertserve.server.scheduling.admission import Pushback, retry_hint_ms
from bertserve.server.scheduling.batcher import Batcher, BatchLimits
from bertserve.server.scheduling.estimate import ThroughputMeter
from bertserve.server.scheduling.router import Router
from bertserve.server.scheduling.work import WorkItem
from tests.support.echo_codec import EchoCodec


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# ---- the meter --------------------------------------------------------------------------------


def test_meter_has_no_rate_before_a_batch_is_computed() -> None:
    clock = Clock()
    meter = ThroughputMeter(clock=clock)
    assert meter.rate() is None
    meter.sent(100)
    clock.advance(0.1)
    assert meter.rate() is None and meter.tokens_at_replicas == 100
    meter.ended(100, computed=False)  # failed: nothing got done
    assert meter.rate() is None and meter.tokens_at_replicas == 0


def test_meter_rate_is_tokens_over_busy_time_and_idle_spells_do_not_dilute_it() -> None:
    clock = Clock()
    meter = ThroughputMeter(window_s=2.0, clock=clock)
    meter.sent(100)
    clock.advance(0.1)
    meter.ended(100)
    assert meter.rate() == pytest.approx(1000.0)
    clock.advance(0.5)  # idle: the rate stays what the replicas did while busy
    assert meter.rate() == pytest.approx(1000.0)
    # Two batches at once (two replicas) over 0.1 s: twice the tokens in the same busy time.
    meter.sent(100)
    meter.sent(100)
    clock.advance(0.1)
    meter.ended(100)
    meter.ended(100)
    assert meter.rate() == pytest.approx(300 / 0.2)


def test_meter_rate_follows_the_recent_window() -> None:
    clock = Clock()
    meter = ThroughputMeter(window_s=1.0, clock=clock)
    for _ in range(20):  # slow: 100 tokens in 0.1 s
        meter.sent(100)
        clock.advance(0.1)
        meter.ended(100)
    assert meter.rate() == pytest.approx(1000.0)
    for _ in range(20):  # four times faster, for half a window: half the window at each speed
        meter.sent(100)
        clock.advance(0.025)
        meter.ended(100)
    assert meter.rate() == pytest.approx((20 + 5) * 100 / 1.0)
    for _ in range(40):  # a whole window at the new speed
        meter.sent(100)
        clock.advance(0.025)
        meter.ended(100)
    assert meter.rate() == pytest.approx(4000.0)


def test_meter_counts_tokens_at_replicas_while_batches_run() -> None:
    meter = ThroughputMeter(clock=Clock())
    meter.sent(30)
    meter.sent(12)
    assert meter.tokens_at_replicas == 42
    meter.ended(30)
    assert meter.tokens_at_replicas == 12


# ---- the hint ---------------------------------------------------------------------------------


def test_hint_is_the_work_ahead_over_the_rate() -> None:
    assert retry_hint_ms(250, 1000.0) == 250
    assert retry_hint_ms(2500, 1000.0) == 2500
    assert retry_hint_ms(0, 1000.0) == adm.MIN_RETRY_MS


def test_hint_stays_within_its_bounds_and_has_a_default_without_a_rate() -> None:
    assert retry_hint_ms(1, 10_000.0) == adm.MIN_RETRY_MS
    assert retry_hint_ms(10**9, 1.0) == adm.MAX_RETRY_MS
    assert retry_hint_ms(500, None) == adm.DEFAULT_RETRY_MS
    assert retry_hint_ms(500, 0.0) == adm.DEFAULT_RETRY_MS


def _pushback(clock: Clock, work: list[int], inflight: list[int], rate: list[float | None]) -> Pushback:
    return Pushback(lambda: work[0], lambda: inflight[0], lambda: rate[0], clock=clock)


def test_callers_rejected_together_are_told_successively_later_times() -> None:
    clock = Clock()
    # 8 calls in flight, 10 tokens each, the replicas get through 1000 tokens a second.
    pushback = _pushback(clock, [80], [8], [1000.0])
    hints = [pushback.reject() for _ in range(16)]
    # The first waits for the work in flight (80 ms); each next one for the calls before it too.
    assert hints == [80 + 10 * k for k in range(16)]
    assert pushback.deferred == 16


def test_a_rejected_call_counts_until_it_is_expected_back() -> None:
    clock = Clock()
    pushback = _pushback(clock, [80], [8], [1000.0])
    assert pushback.reject() == 80
    assert pushback.reject() == 90  # the first one counts: it comes back
    clock.advance(adm.DEFERRED_HOLD * 0.080 - 0.001)
    assert pushback.deferred == 2
    clock.advance(0.002)  # past the first's expected return
    assert pushback.deferred == 1
    clock.advance(1.0)
    assert pushback.deferred == 0
    assert pushback.reject() == 80  # nothing deferred: the work in flight alone


def test_the_hint_grows_with_the_work_queued_and_at_the_replicas() -> None:
    clock = Clock()
    work = [40]
    pushback = _pushback(clock, work, [4], [1000.0])
    assert pushback.reject() == 40
    clock.advance(10.0)  # the deferred one is long gone
    work[0] = 400
    assert pushback.reject() == 400


def test_without_a_rate_the_first_burst_is_spread_over_the_default() -> None:
    clock = Clock()
    pushback = _pushback(clock, [80], [8], [None])
    hints = [pushback.reject() for _ in range(8)]
    # The work in flight is assumed to take DEFAULT_RETRY_MS; each rejected call adds its share.
    assert hints == [round(adm.DEFAULT_RETRY_MS * (80 + 10 * k) / 80) for k in range(8)]
    assert hints[0] == adm.DEFAULT_RETRY_MS


def test_an_idle_model_without_a_rate_gives_the_default() -> None:
    pushback = _pushback(Clock(), [0], [0], [None])
    assert pushback.reject() == adm.DEFAULT_RETRY_MS


def test_the_hint_of_a_long_queue_is_capped_and_the_record_is_bounded() -> None:
    clock = Clock()
    pushback = Pushback(lambda: 80, lambda: 8, lambda: 10.0, clock=clock, max_deferred=5)
    hints = [pushback.reject() for _ in range(20)]
    assert max(hints) == adm.MAX_RETRY_MS
    assert pushback.deferred == 5


# ---- a batcher's queue-full rejection ---------------------------------------------------------


class NoReplicas:
    def replicas(self) -> Sequence[Any]:
        return []


def _queue_of(max_queued: int, **kw: Any) -> Batcher:
    """A fill-mask batcher whose queue holds `max_queued` inputs, with no replica to take them."""
    limits = BatchLimits(max_batch_size=4, max_batch_tokens=512, max_wait_s=0.0, max_queued=max_queued)
    return Batcher("m:fill_mask", EchoCodec(), Router(NoReplicas()), limits, **kw)


def test_a_full_queue_without_a_model_hint_uses_its_own_work_over_the_meter_rate() -> None:
    async def main() -> None:
        clock = Clock()
        meter = ThroughputMeter(clock=clock)
        meter.sent(50)  # one batch of 50 tokens ran for 0.1 s: 500 tokens/s
        clock.advance(0.1)
        meter.ended(50)
        meter.sent(20)  # and one is at a replica now
        loop = asyncio.get_running_loop()
        batcher = _queue_of(2, throughput=meter, clock=clock)
        queued = [WorkItem((1,) * 30, (0,) * 30, None, loop.create_future(), None, clock()) for _ in "ab"]
        batcher.submit(queued)
        with pytest.raises(Overloaded) as info:
            batcher.submit([WorkItem((1,), (0,), None, loop.create_future(), None, clock())])
        # (60 queued + 20 at a replica) tokens at 500 tokens/s.
        assert info.value.retry_after_ms == 160

    asyncio.run(main())


def test_a_full_queue_asks_the_model_for_its_hint() -> None:
    async def main() -> None:
        asked: list[int] = []

        def hint() -> int:
            asked.append(1)
            return 777

        loop = asyncio.get_running_loop()
        batcher = _queue_of(1, retry_after_ms=hint)
        batcher.submit([WorkItem((1,), (0,), None, loop.create_future())])
        with pytest.raises(Overloaded) as info:
            batcher.submit([WorkItem((1,), (0,), None, loop.create_future())])
        assert info.value.retry_after_ms == 777 and asked == [1]

    asyncio.run(main())
