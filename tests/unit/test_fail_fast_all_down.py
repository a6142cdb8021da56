"""Every replica of a model down at once (restarting): a call that cannot wait for a replica to
come back fails fast with UNAVAILABLE and a retry hint, instead of waiting for DEADLINE_EXCEEDED;
a call with no deadline, or time enough, waits and is answered. Fake replicas, a fake pool and a
fake clock: no Ray, no wall-clock timing.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import pytest

from bertserve.server.errors import RETRY_PUSHBACK_KEY, Unavailable, trailers_for
from bertserve.server.scheduling import admission as adm
from bertserve.server.scheduling.batcher import Batcher, BatchLimits
from bertserve.server.scheduling.router import Router
from bertserve.server.scheduling.work import ItemResult, WorkItem
from bertserve.workers import pool as pool_module
from bertserve.workers.errors import ReplicaFailed
from bertserve.workers.pool import Placement, ReplicaHandle, ReplicaPool, ReplicaState
from bertserve.workers.protocol import ReplicaReport
from bertserve.workers.spec import ReplicaSpec
from tests.support.echo_codec import EchoCodec

S = ReplicaState


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ---- the pool: how long a replica takes to come back ------------------------------------------


class _Ready:
    """`actor.ready.remote()`: answers once `gate` opens."""

    def __init__(self, replica_id: str, gate: asyncio.Event) -> None:
        self._replica_id = replica_id
        self._gate = gate

    async def remote(self) -> ReplicaReport:
        await self._gate.wait()
        return ReplicaReport(self._replica_id, "cpu", "float32", (), "node-a", 7, 100, 64)


class FakeActor:
    def __init__(self, replica_id: str) -> None:
        self.gate = asyncio.Event()
        self.ready = _Ready(replica_id, self.gate)


class FakePool(ReplicaPool):
    def __init__(self, n: int, clock: Clock) -> None:
        super().__init__(ReplicaSpec(model_name="m", checkpoint="x"), n, Placement(num_cpus=1), clock=clock)
        self.actors: dict[str, FakeActor] = {}

    def _actor_class(self) -> Any:
        return None

    def _create_actor(self, cls: Any, replica_id: str, index: int) -> Any:
        self.actors[replica_id] = FakeActor(replica_id)
        return self.actors[replica_id]

    async def _probe_loop(self) -> None:  # the tests change states themselves
        pass


async def _until(check: Callable[[], bool]) -> None:
    while not check():
        await asyncio.sleep(0)


async def _started(n: int, clock: Clock, warm_s: float) -> FakePool:
    """A pool whose replicas took `warm_s` (on the fake clock) to warm up."""
    pool = FakePool(n, clock)
    start = asyncio.ensure_future(pool.start(10))
    await _until(lambda: len(pool.actors) == n)
    clock.now += warm_s
    for actor in pool.actors.values():
        actor.gate.set()
    await start
    for actor in pool.actors.values():
        actor.gate.clear()  # the next ready() (a restart's probe) waits again
    return pool


def test_before_a_restart_is_measured_the_warm_up_at_start_is_expected_but_at_least_the_default() -> None:
    async def scenario() -> None:
        clock = Clock()
        pool = await _started(2, clock, warm_s=3.0)
        assert pool.recovery_s is None and pool.startup_s == pytest.approx(3.0)
        assert pool.expected_ready_at() == math.inf  # every replica is ready: none on its way
        pool.replica_failed(pool.replicas()[0], RuntimeError("killed"))
        assert pool.expected_ready_at() == pytest.approx(clock.now + 3.0)
        await pool.stop()
        # A warm-up at start quicker than the default (Ray started the processes ahead).
        pool = await _started(1, clock, warm_s=0.5)
        pool.replica_failed(pool.replicas()[0], RuntimeError("killed"))
        assert pool.expected_ready_at() == pytest.approx(clock.now + pool_module.DEFAULT_RECOVERY_S)
        await pool.stop()

    run(scenario())


def test_a_restarting_replica_is_expected_back_one_recovery_time_after_it_failed() -> None:
    async def scenario() -> None:
        clock = Clock()
        pool = await _started(2, clock, warm_s=3.0)  # expected: 3 s, the warm-up at start
        a, b = pool.replicas()
        pool.replica_failed(a, RuntimeError("killed"))
        assert a.state is S.RESTARTING
        assert pool.expected_ready_at() == pytest.approx(clock.now + 3.0)
        clock.now += 1.0
        pool.replica_failed(b, RuntimeError("killed"))
        assert pool.expected_ready_at() == pytest.approx(clock.now + 2.0)  # the sooner: a
        clock.now += 2.5  # a is late: expected one recovery time from now; b is due in 0.5 s
        assert pool.expected_ready_at() == pytest.approx(clock.now + 0.5)
        clock.now += 1.0  # both late
        assert pool.expected_ready_at() == pytest.approx(clock.now + 3.0)
        await pool.stop()

    run(scenario())


def test_a_measured_restart_updates_the_expected_return() -> None:
    async def scenario() -> None:
        clock = Clock()
        pool = await _started(1, clock, warm_s=4.0)
        (a,) = pool.replicas()
        pool.replica_failed(a, RuntimeError("killed"))
        clock.now += 2.0
        pool.actors[a.replica_id].gate.set()  # the recovery probe answers: READY again
        await _until(lambda: a.state is S.READY)
        assert pool.recovery_s == pytest.approx(2.0)  # measured: the start-up warm-up no longer counts
        pool.replica_failed(a, RuntimeError("killed again"))
        assert pool.expected_ready_at() == pytest.approx(clock.now + 2.0)
        pool.actors[a.replica_id].gate.clear()
        clock.now += 3.0
        pool.actors[a.replica_id].gate.set()
        await _until(lambda: a.state is S.READY)
        w = pool_module.RECOVERY_WEIGHT
        assert pool.recovery_s == pytest.approx(w * 3.0 + (1 - w) * 2.0)
        await pool.stop()

    run(scenario())


def test_no_replica_on_its_way_back_is_expected_never() -> None:
    async def scenario() -> None:
        clock = Clock()
        pool = await _started(2, clock, warm_s=1.0)
        a, b = pool.replicas()
        a.state = S.DEAD
        b.state = S.PENDING  # waiting for resources: no telling when
        assert pool.expected_ready_at() == math.inf
        await pool.stop()

    run(scenario())


def test_before_any_measurement_the_default_is_expected() -> None:
    clock = Clock()
    pool = FakePool(1, clock)
    handle = ReplicaHandle("m-0", None, pool)
    handle.state = S.RESTARTING
    handle.down_since = clock.now
    pool._handles.append(handle)
    assert pool.recovery_s is None and pool.startup_s == 0.0
    assert pool.expected_ready_at() == pytest.approx(clock.now + pool_module.DEFAULT_RECOVERY_S)


# ---- the batcher: fail fast, or wait -----------------------------------------------------------


class FakeReplica:
    """READY or RESTARTING; a call fails (the process died) when `fail` is set."""

    def __init__(self, replica_id: str) -> None:
        self.replica_id = replica_id
        self.transport = "test"
        self.state = S.READY
        self.fail = False
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()
        self.calls: list[Any] = []

    @property
    def ready(self) -> bool:
        return self.state is S.READY

    @property
    def alive(self) -> bool:
        return self.state not in (S.DEAD, S.DRAINING)

    async def call(self, method: str, batch: Any) -> Any:
        self.calls.append(batch)
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            self.state = S.RESTARTING
            raise ReplicaFailed("killed")
        return batch


class Replicas:
    """The pool as the router sees it, with the expected return the test sets."""

    def __init__(self, *replicas: FakeReplica) -> None:
        self._replicas = list(replicas)
        self.eta: float | None = None

    def replicas(self) -> Sequence[FakeReplica]:
        return self._replicas

    def expected_ready_at(self) -> float | None:
        return self.eta


def _rig(clock: Clock, *replicas: FakeReplica, eta: bool = True) -> tuple[Replicas, Router, Batcher]:
    source = Replicas(*replicas)
    router = Router(source, depth=1, ready_eta=source.expected_ready_at if eta else None, clock=clock)
    limits = BatchLimits(max_batch_size=8, max_batch_tokens=1024, max_wait_s=0.0, max_queued=100)
    batcher = Batcher("m:echo", EchoCodec(), router, limits, clock=clock)
    return source, router, batcher


def _item(clock: Clock, deadline_in: float | None, tag: int = 1) -> WorkItem:
    deadline = None if deadline_in is None else clock.now + deadline_in
    return WorkItem(
        (tag,) * 3, (0,) * 3, None, asyncio.get_running_loop().create_future(), deadline, clock.now
    )


def _all_restarting(source: Replicas, clock: Clock, back_in: float) -> None:
    for replica in source.replicas():
        replica.state = S.RESTARTING
    source.eta = clock.now + back_in


def test_a_call_whose_deadline_ends_before_a_replica_is_back_fails_at_once_with_a_hint() -> None:
    async def scenario() -> None:
        clock = Clock()
        source, _, batcher = _rig(clock, FakeReplica("r0"), FakeReplica("r1"))
        batcher.start()
        _all_restarting(source, clock, back_in=2.0)
        with pytest.raises(Unavailable, match="none is expected back") as info:
            batcher.submit([_item(clock, deadline_in=0.5)])
        assert info.value.retry_after_ms == 2000
        assert batcher.queued == 0 and batcher.queued_tokens == 0
        await batcher.stop()

    run(scenario())


def test_a_request_fails_whole_when_any_of_its_inputs_cannot_wait() -> None:
    async def scenario() -> None:
        clock = Clock()
        source, _, batcher = _rig(clock, FakeReplica("r0"))
        _all_restarting(source, clock, back_in=2.0)
        with pytest.raises(Unavailable):
            batcher.submit([_item(clock, deadline_in=5.0), _item(clock, deadline_in=1.0)])
        assert batcher.queued == 0
        await batcher.stop()

    run(scenario())


def test_a_call_with_time_enough_or_no_deadline_waits_and_is_answered_when_a_replica_is_back() -> None:
    async def scenario() -> None:
        clock = Clock()
        replica = FakeReplica("r0")
        source, router, batcher = _rig(clock, replica)
        batcher.start()
        _all_restarting(source, clock, back_in=2.0)
        patient = _item(clock, deadline_in=5.0, tag=1)
        unbounded = _item(clock, deadline_in=None, tag=2)
        batcher.submit([patient])
        batcher.submit([unbounded])
        assert batcher.queued == 2
        await asyncio.sleep(0)
        assert not patient.future.done() and not unbounded.future.done()
        clock.now += 1.5
        replica.state = S.READY  # back
        batcher.replicas_changed()
        router.replicas_changed()
        results: list[ItemResult] = [await patient.future, await unbounded.future]
        assert [r.output for r in results] == [(1, 1, 1), (2, 2, 2)]
        await batcher.stop()

    run(scenario())


def test_a_call_still_waiting_when_the_replica_is_late_fails_once_it_is_expected_a_restart_later() -> None:
    async def scenario() -> None:
        clock = Clock()
        source, _, batcher = _rig(clock, FakeReplica("r0"))
        batcher.start()
        _all_restarting(source, clock, back_in=0.05)
        item = _item(clock, deadline_in=1.0)
        unbounded = _item(clock, deadline_in=None)
        batcher.submit([item])  # time enough: it waits
        batcher.submit([unbounded])
        # The replica is not back when expected: the pool now expects it a whole restart later.
        clock.now += 0.05
        source.eta = clock.now + 2.0
        # The batcher looks again at the time it expected the replica (a real 0.05 s timer).
        with pytest.raises(Unavailable) as info:
            await item.future
        assert info.value.retry_after_ms == 2000
        assert not unbounded.future.done() and batcher.queued == 1
        await batcher.stop()

    run(scenario())


def test_when_the_last_ready_replica_goes_the_queued_calls_that_cannot_wait_fail() -> None:
    async def scenario() -> None:
        clock = Clock()
        replica = FakeReplica("r0")
        replica.gate = asyncio.Event()
        source, router, batcher = _rig(clock, replica)
        batcher.start()
        running = _item(clock, deadline_in=30.0, tag=9)
        batcher.submit([running])
        await replica.started.wait()  # computing: the next ones queue (depth 1)
        short = _item(clock, deadline_in=0.5, tag=1)
        long = _item(clock, deadline_in=10.0, tag=2)
        batcher.submit([short])
        batcher.submit([long])
        assert batcher.queued == 2
        _all_restarting(source, clock, back_in=3.0)  # the pool saw it fail
        batcher.replicas_changed()
        with pytest.raises(Unavailable) as info:
            await short.future
        assert info.value.retry_after_ms == 3000
        assert batcher.queued == 1 and batcher.queued_tokens == 3 and not long.future.done()
        replica.state = S.READY
        replica.gate.set()
        batcher.replicas_changed()
        router.replicas_changed()
        assert (await long.future).output == (2, 2, 2)
        await batcher.stop()

    run(scenario())


def test_a_batch_whose_replica_died_while_the_other_restarts_fails_the_calls_that_cannot_wait() -> None:
    async def scenario() -> None:
        clock = Clock()
        dying, other = FakeReplica("r0"), FakeReplica("r1")
        other.state = S.RESTARTING
        dying.gate = asyncio.Event()
        source, router, batcher = _rig(clock, dying, other)
        batcher.start()
        short = _item(clock, deadline_in=0.5, tag=1)
        long = _item(clock, deadline_in=10.0, tag=2)
        batcher.submit([short, long])  # one request, one batch on r0
        await dying.started.wait()
        dying.fail = True
        source.eta = clock.now + 2.0
        dying.gate.set()  # r0 dies with the batch: its retry would wait for a replica
        with pytest.raises(Unavailable) as info:
            await short.future
        assert info.value.retry_after_ms == 2000
        assert not long.future.done()  # waits for a replica, within its deadline
        dying.fail = False
        other.state = S.READY
        router.replicas_changed()
        assert (await long.future).output == (2, 2, 2)
        assert other.calls == [[(1, 1, 1), (2, 2, 2)]]  # the batch, retried once on r1
        await batcher.stop()

    run(scenario())


def test_a_batch_waiting_for_its_retry_fails_the_calls_that_cannot_wait_when_the_last_replica_goes() -> None:
    async def scenario() -> None:
        clock = Clock()
        dying, busy = FakeReplica("r0"), FakeReplica("r1")
        dying.gate, busy.gate = asyncio.Event(), asyncio.Event()
        source, router, batcher = _rig(clock, dying, busy)
        batcher.start()
        short = _item(clock, deadline_in=0.5, tag=1)
        long = _item(clock, deadline_in=10.0, tag=2)
        batcher.submit([short, long])
        await dying.started.wait()
        other = _item(clock, deadline_in=10.0, tag=3)
        batcher.submit([other])
        await busy.started.wait()  # both replicas hold a batch (depth 1)
        dying.fail = True
        dying.gate.set()  # r0 dies: its batch waits for r1's slot, r1 being still ready
        await _until(lambda: dying.state is S.RESTARTING)
        await asyncio.sleep(0)
        assert not short.future.done()
        busy.state = S.RESTARTING  # then the pool sees r1 go too
        source.eta = clock.now + 2.0
        batcher.replicas_changed()
        with pytest.raises(Unavailable) as info:
            await short.future
        assert info.value.retry_after_ms == 2000 and not long.future.done()
        busy.state = S.READY
        busy.gate.set()
        router.replicas_changed()
        assert (await other.future).output == (3, 3, 3)
        assert (await long.future).output == (2, 2, 2)
        await batcher.stop()

    run(scenario())


def test_a_batch_all_of_whose_calls_cannot_wait_fails_at_once() -> None:
    async def scenario() -> None:
        clock = Clock()
        dying, other = FakeReplica("r0"), FakeReplica("r1")
        other.state = S.RESTARTING
        dying.fail = True
        source, _, batcher = _rig(clock, dying, other)
        source.eta = clock.now + 2.0
        batcher.start()
        item = _item(clock, deadline_in=0.5)
        batcher.submit([item])
        with pytest.raises(Unavailable) as info:
            await item.future
        assert info.value.retry_after_ms == 2000 and other.calls == []
        await batcher.stop()

    run(scenario())


def test_with_no_replica_on_its_way_calls_with_a_deadline_fail_without_a_hint() -> None:
    async def scenario() -> None:
        clock = Clock()
        source, _, batcher = _rig(clock, FakeReplica("r0"))
        _all_restarting(source, clock, back_in=0.0)
        source.eta = math.inf  # e.g. only a replica waiting for resources
        with pytest.raises(Unavailable) as info:
            batcher.submit([_item(clock, deadline_in=60.0)])
        assert info.value.retry_after_ms is None
        batcher.submit([_item(clock, deadline_in=None)])  # no deadline: it waits
        assert batcher.queued == 1
        await batcher.stop()

    run(scenario())


def test_without_an_estimate_calls_wait_as_before() -> None:
    async def scenario() -> None:
        clock = Clock()
        source, _, batcher = _rig(clock, FakeReplica("r0"), eta=False)
        _all_restarting(source, clock, back_in=100.0)
        batcher.submit([_item(clock, deadline_in=0.1)])
        batcher.replicas_changed()
        assert batcher.queued == 1
        await batcher.stop()

    run(scenario())


def test_the_hint_of_a_replica_expected_far_off_is_capped() -> None:
    async def scenario() -> None:
        clock = Clock()
        source, _, batcher = _rig(clock, FakeReplica("r0"))
        _all_restarting(source, clock, back_in=600.0)
        with pytest.raises(Unavailable) as info:
            batcher.submit([_item(clock, deadline_in=1.0)])
        assert info.value.retry_after_ms == adm.MAX_RETRY_MS
        await batcher.stop()

    run(scenario())


def test_an_unavailable_with_a_hint_carries_the_pushback_trailer() -> None:
    assert trailers_for(Unavailable("x", retry_after_ms=1500)) == ((RETRY_PUSHBACK_KEY, "1500"),)
    assert trailers_for(Unavailable("the server is shutting down")) == ()
