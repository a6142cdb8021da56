"""The batcher and router with fake replicas: no Ray, no model. Every test runs on virtual time
(tests/support/virtual_time.py): the router and batchers read the loop's clock, and a test lets
time pass with `elapse`, so what it sees does not depend on how busy the machine is."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from bertserve.server.errors import DeadlineExceeded, Internal, Overloaded, Unavailable
from bertserve.server.scheduling.batcher import Batcher, BatchLimits, take_batch
from bertserve.server.scheduling.router import Router
from bertserve.server.scheduling.work import BatchCodec, ItemResult, WorkItem
from bertserve.workers.errors import ReplicaFailed
from tests.support import virtual_time as vt
from tests.support.echo_codec import EchoCodec
from tests.support.virtual_time import elapse


class FakeReplica:
    def __init__(self, replica_id: str, *, fail: bool = False) -> None:
        self.replica_id = replica_id
        self.transport = "test"
        self.fail = fail
        self.dead = False
        self.calls: list[list[tuple[int, ...]]] = []
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()
        # The most slots the router had reserved on it at any call (set `router` to watch).
        self.router: Router | None = None
        self.max_inflight_seen = 0

    @property
    def ready(self) -> bool:
        return not self.dead

    @property
    def alive(self) -> bool:
        return not self.dead

    async def call(self, method: str, batch: list[tuple[int, ...]]) -> Any:
        self.calls.append(batch)
        if self.router is not None:
            self.max_inflight_seen = max(self.max_inflight_seen, self.router.in_flight(self.replica_id))
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            self.dead = True
            raise ReplicaFailed("killed")
        return batch


class Pool:
    def __init__(self, *replicas: FakeReplica) -> None:
        self._replicas = list(replicas)

    def replicas(self) -> Sequence[FakeReplica]:
        return self._replicas


def _item(length: int, *, deadline: float | None = None, tag: int = 0) -> WorkItem:
    loop = asyncio.get_running_loop()
    return WorkItem(tuple([tag] * length), tuple([0] * length), None, loop.create_future(), deadline)


def _limits(**kw: Any) -> BatchLimits:
    base = {"max_batch_size": 8, "max_batch_tokens": 1024, "max_wait_s": 0.05, "max_queued": 100}
    return BatchLimits(**{**base, **kw})


def _run(coro: Any) -> Any:
    return vt.run(coro, 20)


def _router(*replicas: FakeReplica, **kw: Any) -> Router:
    """A router over `replicas` on the loop's (virtual) clock."""
    return Router(Pool(*replicas), clock=vt.now, **kw)


def _batcher(name: str, codec: BatchCodec, router: Router, limits: BatchLimits) -> Batcher:
    return Batcher(name, codec, router, limits, clock=vt.now)


# ---- take_batch ------------------------------------------------------------------------------


def test_take_batch_groups_lengths_around_the_oldest_item() -> None:
    async def main() -> None:
        queue = [_item(n, tag=i) for i, n in enumerate([10, 100, 12, 95, 11, 9])]
        batch = take_batch(queue, max_size=3, max_tokens=10_000)
        assert [it.length for it in batch] == [10, 11, 9]
        assert [it.length for it in queue] == [100, 12, 95]

    _run(main())


def test_take_batch_respects_the_padded_token_budget() -> None:
    async def main() -> None:
        queue = [_item(n) for n in [50, 60, 70, 200]]
        batch = take_batch(queue, max_size=10, max_tokens=200)
        # 3 x 70 = 210 > 200, so only 50 and 60 fit (2 x 60 = 120); 200 alone would be 3 x 200.
        assert [it.length for it in batch] == [50, 60]

    _run(main())


def test_take_batch_always_takes_the_oldest_even_when_alone_over_budget() -> None:
    async def main() -> None:
        queue = [_item(300), _item(5)]
        assert [it.length for it in take_batch(queue, max_size=4, max_tokens=256)] == [300]

    _run(main())


# ---- Batcher ---------------------------------------------------------------------------------


def test_idle_replica_gets_a_request_at_once_without_waiting_for_max_wait() -> None:
    async def main() -> None:
        replica = FakeReplica("r0")
        batcher = _batcher("t", EchoCodec(), _router(replica), _limits(max_wait_s=10.0))
        batcher.start()
        item = _item(4, tag=7)
        start = vt.now()
        batcher.submit([item])
        result: ItemResult = await item.future
        assert vt.now() - start < 1.0
        assert result.output == (7, 7, 7, 7) and result.replica_id == "r0"
        await batcher.stop()

    _run(main())


def test_requests_arriving_while_replica_is_busy_share_one_batch_and_one_call() -> None:
    async def main() -> None:
        replica = FakeReplica("r0")
        replica.gate = asyncio.Event()
        batcher = _batcher("t", EchoCodec(), _router(replica), _limits(max_wait_s=0.2))
        batcher.start()
        first = _item(3, tag=0)
        batcher.submit([first])
        await replica.started.wait()  # the replica is now busy with batch 1
        others = [_item(3, tag=i) for i in range(1, 6)]
        batcher.submit(others)
        replica.gate.set()
        results = await asyncio.gather(first.future, *(o.future for o in others))
        assert [r.output[0] for r in results] == [0, 1, 2, 3, 4, 5]
        assert [len(c) for c in replica.calls] == [1, 5]
        assert batcher.stats.batches == 2 and batcher.stats.sequences == 6
        await batcher.stop()

    _run(main())


def test_router_keeps_at_most_depth_batches_per_replica_and_spreads_load() -> None:
    async def main() -> None:
        a, b = FakeReplica("a"), FakeReplica("b")
        gate = asyncio.Event()
        a.gate = b.gate = gate
        router = _router(a, b, depth=2)
        a.router = b.router = router
        batcher = _batcher("t", EchoCodec(), router, _limits(max_batch_size=1, max_wait_s=0))
        batcher.start()
        items = [_item(2, tag=i) for i in range(10)]
        batcher.submit(items)
        await a.started.wait()
        await b.started.wait()
        await elapse(0.05)  # the dispatcher fills every free slot meanwhile
        assert len(a.calls) == 2 and len(b.calls) == 2
        gate.set()
        await asyncio.gather(*(it.future for it in items))
        assert a.max_inflight_seen <= 2 and b.max_inflight_seen <= 2
        assert len(a.calls) + len(b.calls) == 10
        await batcher.stop()

    _run(main())


def test_router_spreads_a_lone_client_over_replicas_when_asked() -> None:
    async def main() -> None:
        a, b = FakeReplica("a"), FakeReplica("b")
        router = _router(a, b, prefer_warm=False)  # replica_choice: spread
        batcher = _batcher("t", EchoCodec(), router, _limits(max_wait_s=0))
        batcher.start()
        for i in range(4):
            item = _item(2, tag=i)
            batcher.submit([item])
            await item.future
        assert (len(a.calls), len(b.calls)) == (2, 2)
        await batcher.stop()

    _run(main())


def test_a_lone_request_to_an_idle_server_is_sent_from_submit() -> None:
    async def main() -> None:
        a, b = FakeReplica("a"), FakeReplica("b")
        router = _router(a, b, depth=1)
        batcher = _batcher("t", EchoCodec(), router, _limits(max_wait_s=0))
        batcher.start()
        await asyncio.sleep(0)  # the dispatcher is waiting for work
        first = _item(2, tag=1)
        batcher.submit([first])
        # Reserved and queued for the replica in the same turn, without waking the dispatcher.
        assert batcher.queued == 0 and router.in_flight("a") + router.in_flight("b") == 1
        # With a replica busy (under load), a request waits for the dispatcher's turn, so that
        # requests arriving in the same turn can join its batch.
        a.gate = b.gate = asyncio.Event()
        second = _item(2, tag=2)
        batcher.submit([second])
        third = _item(2, tag=3)
        batcher.submit([third])
        assert batcher.queued == 2
        await elapse(0.01)
        assert batcher.queued == 0 and router.in_flight("a") + router.in_flight("b") == 2
        assert sorted(len(r.calls) for r in (a, b)) == [1, 1]  # the two went as one batch
        a.gate.set()
        assert [(await it.future).output for it in (first, second, third)] == [(1, 1), (2, 2), (3, 3)]
        # A request whose deadline has passed fails at once and reserves nothing.
        late = _item(2, deadline=vt.now() - 1)
        batcher.submit([late])
        with pytest.raises(DeadlineExceeded):
            await late.future
        await elapse(0.01)
        assert router.in_flight("a") == router.in_flight("b") == 0
        await batcher.stop()

    _run(main())


def test_callers_resume_after_the_release_and_before_the_bookkeeping() -> None:
    async def main() -> None:
        replica = FakeReplica("a")
        router = _router(replica)
        batcher = _batcher("t", EchoCodec(), router, _limits(max_wait_s=0))
        batcher.start()
        item = _item(2)
        batcher.submit([item])
        await item.future
        # The replica is free for the caller's next request, the batch not yet counted.
        assert router.in_flight("a") == 0 and batcher.stats.batches == 0
        await asyncio.sleep(0)
        load = router.load("a")
        assert batcher.stats.batches == 1 and load is not None and load.batches == 1
        await batcher.stop()

    _run(main())


def test_router_keeps_a_lone_client_on_the_replica_that_finished_last() -> None:
    async def main() -> None:
        a, b, c = FakeReplica("a"), FakeReplica("b"), FakeReplica("c")
        batcher = _batcher("t", EchoCodec(), _router(a, b, c), _limits(max_wait_s=0))
        batcher.start()
        for i in range(5):  # one request at a time: all on one warm replica, not round robin
            item = _item(2, tag=i)
            batcher.submit([item])
            await item.future
        assert (len(a.calls), len(b.calls), len(c.calls)) == (5, 0, 0)
        # While `a` is busy the next request goes to an idle replica, and once both are done the
        # one that finished last is preferred.
        gate = asyncio.Event()
        a.gate = gate
        held = _item(2, tag=10)
        batcher.submit([held])
        await elapse(0.01)
        other = _item(2, tag=11)
        batcher.submit([other])
        await other.future
        assert len(b.calls) == 1 and len(c.calls) == 0
        gate.set()
        await held.future
        a.gate = None
        last = _item(2, tag=12)
        batcher.submit([last])
        await last.future
        assert len(a.calls) == 7 and len(b.calls) == 1
        await batcher.stop()

    _run(main())


def test_results_that_cannot_be_split_fail_the_batch_and_free_the_replica() -> None:
    class BrokenSplit(EchoCodec):
        def split(self, output: Any, items: Sequence[WorkItem]) -> list[Any]:
            raise ValueError("a task's split has a bug")

    async def main() -> None:
        replica = FakeReplica("r0")
        router = _router(replica)
        batcher = _batcher("t", BrokenSplit(), router, _limits(max_wait_s=0))
        batcher.start()
        items = [_item(2, tag=1), _item(2, tag=2)]
        batcher.submit(items)
        for item in items:  # answered with an error, not left waiting forever
            with pytest.raises(Internal, match="results"):
                await item.future
        await asyncio.sleep(0)
        assert router.in_flight("r0") == 0 and batcher.stats.batches == 0
        await batcher.stop()

    _run(main())


def test_full_queue_rejects_the_whole_request_with_overloaded() -> None:
    async def main() -> None:
        replica = FakeReplica("r0")
        batcher = _batcher("t", EchoCodec(), _router(replica), _limits(max_queued=3))
        batcher.submit([_item(1), _item(1)])  # not started: items stay queued
        with pytest.raises(Overloaded, match="queue is full"):
            batcher.submit([_item(1), _item(1)])
        assert batcher.queued == 2
        await batcher.stop()

    _run(main())


def test_request_whose_deadline_passed_in_the_queue_never_reaches_a_replica() -> None:
    async def main() -> None:
        replica = FakeReplica("r0")
        batcher = _batcher("t", EchoCodec(), _router(replica), _limits())
        expired = _item(3, deadline=vt.now() - 0.001, tag=9)
        live = _item(3, tag=1)
        batcher.submit([expired, live])
        batcher.start()
        assert (await live.future).output[0] == 1
        with pytest.raises(DeadlineExceeded):
            await expired.future
        assert all(9 not in ids for batch in replica.calls for ids in batch)
        await batcher.stop()

    _run(main())


def test_cancelled_request_is_skipped_and_others_in_its_batch_succeed() -> None:
    async def main() -> None:
        replica = FakeReplica("r0")
        batcher = _batcher("t", EchoCodec(), _router(replica), _limits())
        gone, kept = _item(3, tag=5), _item(3, tag=6)
        batcher.submit([gone, kept])
        gone.future.cancel()
        batcher.start()
        assert (await kept.future).output[0] == 6
        assert [[ids[0] for ids in batch] for batch in replica.calls] == [[6]]
        await batcher.stop()

    _run(main())


def test_batch_on_a_failed_replica_is_retried_once_on_another() -> None:
    async def main() -> None:
        bad, good = FakeReplica("bad", fail=True), FakeReplica("good")
        router = _router(bad, good)
        good_load = router.load("good")
        assert good_load is not None
        good_load.batches = 10  # the router prefers 'bad' (fewer batches) first
        batcher = _batcher("t", EchoCodec(), router, _limits())
        batcher.start()
        item = _item(2, tag=3)
        batcher.submit([item])
        result = await item.future
        assert result.replica_id == "good" and len(bad.calls) == 1
        assert batcher.stats.retries == 1
        await batcher.stop()

    _run(main())


def test_batch_fails_with_unavailable_when_every_replica_is_dead() -> None:
    async def main() -> None:
        a, b = FakeReplica("a", fail=True), FakeReplica("b", fail=True)
        batcher = _batcher("t", EchoCodec(), _router(a, b), _limits())
        batcher.start()
        item = _item(2)
        batcher.submit([item])
        with pytest.raises(Unavailable):
            await item.future
        later = _item(2)
        batcher.submit([later])
        with pytest.raises(Unavailable, match="no replica"):
            await later.future
        await batcher.stop()

    _run(main())


def test_single_replica_that_keeps_failing_is_retried_once_then_unavailable() -> None:
    async def main() -> None:
        flaky = FakeReplica("only")
        flaky.fail = True

        async def call_and_recover(method: str, batch: list[tuple[int, ...]]) -> Any:
            flaky.calls.append(batch)
            raise ReplicaFailed("crashed again")  # the replica stays ready (Ray restarted it)

        flaky.call = call_and_recover  # type: ignore[method-assign]
        batcher = _batcher("t", EchoCodec(), _router(flaky), _limits())
        batcher.start()
        item = _item(2)
        batcher.submit([item])
        with pytest.raises(Unavailable, match="failed"):
            await item.future
        assert len(flaky.calls) == 2, "one try and exactly one retry"
        await batcher.stop()

    _run(main())


def test_a_batch_filling_for_a_busy_replica_goes_to_one_that_turned_idle() -> None:
    """Replica a runs batch 1 and b runs batch 2; batch 3 fills for a's queued slot. When b
    finishes first, batch 3 goes to b at once instead of queueing behind a."""

    async def main() -> None:
        a, b = FakeReplica("a"), FakeReplica("b")
        a.gate, b.gate = asyncio.Event(), asyncio.Event()
        batcher = _batcher("t", EchoCodec(), _router(a, b, depth=2), _limits(max_wait_s=5.0))
        batcher.start()
        first, second = _item(2, tag=1), _item(2, tag=2)
        batcher.submit([first])
        await a.started.wait()
        batcher.submit([second])
        await b.started.wait()
        third = _item(2, tag=3)
        batcher.submit([third])  # both busy: waits up to max_wait (5 s) for more inputs
        await elapse(0.05)
        b.gate.set()  # b goes idle long before max_wait
        result = await asyncio.wait_for(third.future, 2)
        assert result.replica_id == "b" and [len(c) for c in b.calls] == [1, 1] and len(a.calls) == 1
        a.gate.set()
        await first.future
        await batcher.stop()

    _run(main())


def test_take_batch_keeps_short_inputs_out_of_a_long_batch_below_the_padding_floor() -> None:
    async def main() -> None:
        queue = [_item(200), _item(190), _item(20), _item(16), _item(180)]
        batch = take_batch(queue, max_size=8, max_tokens=10_000, min_efficiency=0.8)
        assert [it.length for it in batch] == [200, 190, 180]
        assert [it.length for it in queue] == [20, 16]
        assert [it.length for it in take_batch(queue, 8, 10_000, 0.8)] == [20, 16]
        # Without a floor the short ones would have been padded to 200.
        queue = [_item(200), _item(20)]
        assert [it.length for it in take_batch(queue, 8, 10_000, 0.0)] == [200, 20]

    _run(main())


def test_among_equally_busy_replicas_the_one_running_longest_takes_the_next_batch() -> None:
    async def main() -> None:
        a, b = FakeReplica("a"), FakeReplica("b")
        router = _router(a, b, depth=2)
        first = await router.acquire()  # idle replicas, none used yet: a (fewest batches, by id order)
        second = await router.acquire()  # b is idle: least loaded
        assert (first.replica.replica_id, second.replica.replica_id) == ("a", "b")
        # b finished its batch after a started: both run one batch now, a's started earlier.
        second.end()
        assert (await router.acquire()).replica.replica_id == "b"  # idle b is preferred (warm)
        first.end()
        assert (await router.acquire()).replica.replica_id == "a"  # a is idle again: the warm one
        # Both busy with one batch each; b's batch started before a's (b was taken first):
        # the next batch queues behind b, which frees up first.
        assert (await router.acquire()).replica.replica_id == "b"

    _run(main())


def test_a_busy_replica_counts_from_when_its_running_batch_started_not_its_last_release() -> None:
    async def main() -> None:
        a, b = FakeReplica("a"), FakeReplica("b")
        router = _router(a, b, depth=2)
        leases = [await router.acquire() for _ in range(4)]  # a and b: one batch running, one queued
        assert (router.in_flight("a"), router.in_flight("b")) == (2, 2)
        on_a = [lease for lease in leases if lease.replica is a]
        on_b = [lease for lease in leases if lease.replica is b]
        on_a[0].end()
        on_a[1].end()  # a is idle from here
        on_b[0].end()  # b's queued batch starts now
        assert (await router.acquire()).replica.replica_id == "a"  # idle first; a's batch starts after b's
        # Both run one batch; a was released before b, but b's batch started first.
        assert (await router.acquire()).replica.replica_id == "b"

    _run(main())


class _Timed(list[Any]):
    """A replica's output that reports its compute time, as real outputs do."""

    compute_us = 0


class TimedReplica(FakeReplica):
    """Reports `compute_us` for every batch, so the batcher learns how long its batches take."""

    def __init__(self, replica_id: str, compute_us: int) -> None:
        super().__init__(replica_id)
        self.compute_us = compute_us

    async def call(self, method: str, batch: list[tuple[int, ...]]) -> Any:
        out = _Timed(await super().call(method, batch))
        out.compute_us = self.compute_us
        return out


async def _queued_batch_behind_a_running_one(fill_queued: bool) -> tuple[TimedReplica, int, int]:
    """The batcher learns 0.4 s for 4 tokens from a first batch; batch 2 (4 tokens: expected 0.4 s)
    then runs while input A arrives, and B 0.15 s later (both past max_wait, 0.01 s). Returns the
    replica and how many calls it had 0.27 s and 0.47 s into batch 2 (still running then)."""
    replica = TimedReplica("r0", compute_us=400_000)  # 4 tokens in 0.4 s
    router = _router(replica, depth=2)
    batcher = _batcher("t", EchoCodec(), router, _limits(max_wait_s=0.01, fill_queued=fill_queued))
    batcher.start()
    learn = _item(4, tag=9)
    batcher.submit([learn])
    await learn.future
    await asyncio.sleep(0)  # the batch's bookkeeping runs a turn after its callers are answered
    assert batcher.batch_time.estimate(4) == pytest.approx(0.4)
    replica.gate = asyncio.Event()
    running = _item(4, tag=0)
    batcher.submit([running])
    await elapse(0.02)
    a = _item(4, tag=1)
    batcher.submit([a])
    await elapse(0.15)
    b = _item(4, tag=2)
    batcher.submit([b])
    await elapse(0.1)  # 0.27 s into the running batch: due to end at 0.4
    calls_at_027 = len(replica.calls)
    await elapse(0.2)  # 0.47 s: the running batch is late (the gate is still shut)
    calls_at_047 = len(replica.calls)
    replica.gate.set()
    await asyncio.gather(running.future, a.future, b.future)
    await batcher.stop()
    return replica, calls_at_027, calls_at_047


def test_a_queued_batch_keeps_filling_until_the_running_batch_is_due_to_end() -> None:
    replica, calls_at_027, calls_at_047 = _run(_queued_batch_behind_a_running_one(fill_queued=True))
    # Sent ahead of the running batch's expected end (0.4 s - 0.08 s), before it finished, with
    # both inputs that arrived while it ran.
    assert calls_at_027 == 2 and calls_at_047 == 3
    assert [[ids[0] for ids in call] for call in replica.calls] == [[9], [0], [1, 2]]


def test_without_fill_queued_the_queued_batch_leaves_after_max_wait() -> None:
    replica, calls_at_027, _ = _run(_queued_batch_behind_a_running_one(fill_queued=False))
    assert calls_at_027 == 3  # A went alone after max_wait; B waits for a free slot
    assert [[ids[0] for ids in call] for call in replica.calls] == [[9], [0], [1], [2]]


def test_router_tracks_which_sent_batch_a_replica_is_running() -> None:
    async def main() -> None:
        replica = FakeReplica("r0")
        replica.gate = asyncio.Event()  # the batches sent stay at the replica
        router = _router(replica, depth=2)
        first = await router.acquire()
        assert first.running() is None  # nothing sent yet
        calls = [asyncio.ensure_future(first.compute("echo", [], expected_s=0.5))]
        since, expected = first.running() or (0.0, 0.0)
        assert expected == 0.5 and since <= vt.now()
        second = await router.acquire()
        calls.append(asyncio.ensure_future(second.compute("echo", [], expected_s=0.25)))
        assert second.running() == (since, 0.5)  # still the first
        await elapse(0.01)
        first.end(1)
        since2, expected2 = second.running() or (0.0, 0.0)
        assert expected2 == 0.25 and since2 > since  # the second runs from now
        (await router.acquire()).end()  # a slot released without a batch changes nothing
        assert second.running() == (since2, 0.25)
        third = await router.acquire()
        calls.append(asyncio.ensure_future(third.compute("echo", [], expected_s=None)))  # no estimate
        second.end(1)
        assert third.running() is None  # running, but with no estimate
        third.end(1)
        replica.gate.set()
        await asyncio.gather(*calls)

    _run(main())


def test_an_input_whose_deadline_passes_while_its_queued_batch_fills_never_reaches_the_replica() -> None:
    async def main() -> None:
        replica = TimedReplica("r0", compute_us=400_000)
        batcher = _batcher("t", EchoCodec(), _router(replica), _limits(max_wait_s=0.01, fill_queued=True))
        batcher.start()
        learn = _item(4, tag=9)
        batcher.submit([learn])
        await learn.future  # 0.4 s for 4 tokens
        replica.gate = asyncio.Event()
        replica.started.clear()
        running = _item(4, tag=0)
        batcher.submit([running])
        await replica.started.wait()  # running alone, the replica now busy
        late = _item(4, tag=1, deadline=vt.now() + 0.1)
        kept = _item(4, tag=2)
        batcher.submit([late, kept])  # held until about 0.32 s into the running batch
        with pytest.raises(DeadlineExceeded):
            await late.future
        replica.gate.set()
        await asyncio.gather(running.future, kept.future)
        assert [[ids[0] for ids in call] for call in replica.calls] == [[9], [0], [2]]
        await batcher.stop()

    _run(main())


def test_a_queued_batch_leaves_as_soon_as_another_tasks_running_batch_ends() -> None:
    """Two batchers (two tasks of one model) share a replica. Task X's batch is expected to run
    0.4 s but ends after 0.1 s; task Y's batch, filling for the queued slot behind it, leaves then
    rather than at X's expected end."""

    async def main() -> None:
        replica = TimedReplica("r0", compute_us=400_000)
        router = _router(replica, depth=2)
        x = _batcher("x", EchoCodec(), router, _limits(max_wait_s=0.01, fill_queued=True))
        y = _batcher("y", EchoCodec(), router, _limits(max_wait_s=0.01, fill_queued=True))
        x.start()
        y.start()
        learn = _item(4, tag=9)
        x.submit([learn])
        await learn.future  # x expects 0.4 s for 4 tokens
        replica.gate = asyncio.Event()
        replica.started.clear()
        running = _item(4, tag=0)
        x.submit([running])
        await replica.started.wait()
        y.batch_time.add(4, 0.4)  # y expects the same of its batches
        queued = _item(4, tag=1)
        y.submit([queued])
        await elapse(0.1)
        assert len(replica.calls) == 2  # y's batch is still filling (due at about 0.32 s)
        sent_at = vt.now()
        replica.gate.set()  # x's batch ends early
        await running.future
        await asyncio.wait_for(queued.future, 0.15)  # y's went at once, not at 0.32 s
        assert vt.now() - sent_at < 0.15
        await x.stop()
        await y.stop()

    _run(main())


def test_a_request_of_several_inputs_to_an_idle_server_is_shared_between_its_replicas() -> None:
    async def main(share: bool) -> list[int]:
        a, b = FakeReplica("a"), FakeReplica("b")
        batcher = _batcher("t", EchoCodec(), _router(a, b), _limits(share=share))
        batcher.start()
        items = [_item(4, tag=i) for i in range(6)]
        batcher.submit(items)
        results = await asyncio.gather(*(it.future for it in items))
        assert [r.output[0] for r in results] == list(range(6))  # each input its own result
        await batcher.stop()
        return sorted(len(call) for replica in (a, b) for call in replica.calls)

    assert _run(main(share=True)) == [3, 3]
    assert _run(main(share=False)) == [6]


def test_waiting_inputs_are_shared_with_a_replica_whose_batch_ends_before_half_of_theirs() -> None:
    """Replica X runs a batch due to end in 0.1 s as 8 inputs arrive and Y is idle: Y takes 4 and
    X's queued slot the other 4 (its batch of 4 would start before half of Y's batch of 8 had
    run), rather than Y taking all 8 in one batch twice as long."""

    async def main(share: bool) -> tuple[list[list[int]], list[list[int]]]:
        a, b = TimedReplica("a", compute_us=100_000), TimedReplica("b", compute_us=100_000)
        router = _router(a, b, depth=2)
        limits = _limits(max_wait_s=0.01, fill_queued=True, share=share)
        batcher = _batcher("t", EchoCodec(), router, limits)
        batcher.start()
        learn = _item(4, tag=9)  # 4 tokens take 0.1 s
        batcher.submit([learn])
        x = a if (await learn.future).replica_id == "a" else b
        y = b if x is a else a
        await asyncio.sleep(0)  # the bookkeeping (the batch time) runs a turn later
        x.gate, y.gate = asyncio.Event(), asyncio.Event()
        running = _item(4, tag=0)
        batcher.submit([running])  # to X, the warm one: due to end 0.1 s from now
        await x.started.wait()
        arriving = [_item(4, tag=i) for i in range(1, 9)]
        batcher.submit(arriving)
        await elapse(0.3)  # X's queued batch leaves ahead of its running batch's end
        x.gate.set()
        y.gate.set()
        await asyncio.gather(running.future, *(it.future for it in arriving))
        await batcher.stop()
        tags = [[[ids[0] for ids in call] for call in r.calls] for r in (x, y)]
        return tags[0], tags[1]

    x_calls, y_calls = _run(main(share=True))
    assert x_calls == [[9], [0], [5, 6, 7, 8]] and y_calls == [[1, 2, 3, 4]]
    x_calls, y_calls = _run(main(share=False))
    assert x_calls == [[9], [0]] and y_calls == [[1, 2, 3, 4, 5, 6, 7, 8]]
