"""ReplicaPool.scale_to with fake actors (no Ray): warm-up before traffic, draining before
removal, which replicas go first, PENDING placement, and the autoscaling policy. The pool tests
run on virtual time (tests/support/virtual_time.py) and wait for the pool's changes, not for
time to pass."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from bertserve.server.scheduling.autoscaler import AutoscaleLimits, AutoscalePolicy
from bertserve.server.scheduling.router import Router
from bertserve.workers.pool import Placement, ReplicaHandle, ReplicaPool, ReplicaState
from bertserve.workers.protocol import ReplicaReport
from bertserve.workers.spec import ReplicaSpec
from tests.support import virtual_time as vt
from tests.support.virtual_time import elapse

S = ReplicaState


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return vt.run(coro, 20)


class _Method:
    def __init__(self, fn: Any) -> None:
        self._fn = fn

    def remote(self, *args: Any) -> Any:
        return self._fn(*args)


class FakeActor:
    """Answers `ready()` once its gate opens (a replica loading its weights, or waiting for resources)."""

    def __init__(self, replica_id: str) -> None:
        self.replica_id = replica_id
        self.gate = asyncio.Event()
        self.ready = _Method(self._ready)

    async def _ready(self) -> ReplicaReport:
        await self.gate.wait()
        return ReplicaReport(self.replica_id, "cpu", "float32", (), "node-a", 1, 100, 64)


class FakePool(ReplicaPool):
    def __init__(self, n: int, *, open_gates: bool = True, pending_after_s: float = 60.0) -> None:
        super().__init__(
            ReplicaSpec(model_name="m", checkpoint="x"),
            n,
            Placement(num_cpus=1),
            pending_after_s=pending_after_s,
            clock=vt.now,
        )
        self.actors: dict[str, FakeActor] = {}
        self.killed: list[str] = []
        self.open_gates = open_gates
        self.unplaced = False
        # Wired as a served model wires its router (server/models.py).
        self.router = Router(self, depth=2, clock=vt.now)
        self.subscribe(self.router.replicas_changed)
        self.set_load_view(self.router)
        self.changed = asyncio.Event()  # set on every change of the pool
        self.subscribe(self.changed.set)

    def _actor_class(self) -> Any:
        return None

    def _create_actor(self, cls: Any, replica_id: str, index: int) -> Any:
        actor = FakeActor(replica_id)
        if self.open_gates:
            actor.gate.set()
        self.actors[replica_id] = actor
        return actor

    def _kill(self, handle: ReplicaHandle) -> None:
        self.killed.append(handle.replica_id)

    async def _unplaced(self, handle: ReplicaHandle) -> bool:
        return self.unplaced

    def states(self) -> dict[str, S]:
        return {h.replica_id: h.state for h in self.replicas()}


async def started(n: int, **kwargs: Any) -> FakePool:
    pool = FakePool(n, **kwargs)
    pool.open_gates = True
    await pool.start(5)
    pool.open_gates = kwargs.get("open_gates", True)
    return pool


async def until(pool: FakePool, check: Callable[[], bool]) -> None:
    """Wait for the pool's changes until `check()` holds."""
    while not check():
        pool.changed.clear()
        await pool.changed.wait()


def test_new_replicas_take_traffic_only_once_warm() -> None:
    async def scenario() -> None:
        pool = await started(1, open_gates=False)
        await pool.scale_to(3)
        assert pool.states() == {"m-0": S.READY, "m-1": S.STARTING, "m-2": S.STARTING}
        assert pool.target == 3 and pool.ready_count == 1
        # Four slots wanted, two exist (depth 2 on the one warm replica): the rest must wait.
        a = await pool.router.acquire()
        b = await pool.router.acquire()
        assert a.replica.replica_id == b.replica.replica_id == "m-0"
        third = asyncio.ensure_future(pool.router.acquire())
        await elapse(0.05)
        assert not third.done()
        pool.actors["m-2"].gate.set()
        chosen = await asyncio.wait_for(third, 2)
        assert chosen.replica.replica_id == "m-2"
        assert pool.states()["m-2"] is S.READY and pool.states()["m-1"] is S.STARTING
        await pool.stop()

    run(scenario())


def test_scale_down_drains_in_flight_batches_before_killing() -> None:
    async def scenario() -> None:
        pool = await started(2)
        busy = [await pool.router.acquire(), await pool.router.acquire()]
        assert {lease.replica.replica_id for lease in busy} == {"m-0", "m-1"}
        waiter = asyncio.ensure_future(pool.scale_to(1, wait=True))
        await until(pool, lambda: pool.states().get("m-1") is S.DRAINING)
        assert pool.ready_count == 1 and pool.target == 1
        # The draining replica gets no new batch although it has a free slot.
        for _ in range(3):
            extra = await pool.router.acquire()
            assert extra.replica.replica_id == "m-0"
            extra.end()
        await elapse(0.05)
        assert pool.killed == [] and not waiter.done()
        draining = next(lease for lease in busy if lease.replica.replica_id == "m-1")
        draining.end()  # its last batch finishes
        await asyncio.wait_for(waiter, 2)
        assert pool.killed == ["m-1"] and pool.states() == {"m-0": S.READY}
        await pool.stop()

    run(scenario())


def test_scale_down_removes_starting_then_idle_then_newest() -> None:
    async def scenario() -> None:
        pool = await started(3)
        pool.open_gates = False
        await pool.scale_to(4)  # m-3 is still starting
        # m-0 busy, m-1 and m-2 idle: m-3 (starting) goes first, then the newest idle one, m-2.
        busy = pool.router.acquire_idle()
        assert busy is not None and busy.replica.replica_id == "m-0"
        await pool.scale_to(2, wait=True)
        assert pool.killed == ["m-3", "m-2"]
        assert pool.states() == {"m-0": S.READY, "m-1": S.READY}
        busy.end()
        await pool.stop()

    run(scenario())


def test_unplaceable_replica_is_pending_and_turns_ready_when_placed() -> None:
    async def scenario() -> None:
        pool = await started(1, open_gates=False, pending_after_s=0.02)
        pool.unplaced = True
        await pool.scale_to(2, wait=True)  # returns once the new replica is PENDING
        assert pool.states() == {"m-0": S.READY, "m-1": S.PENDING}
        assert pool.target == 2 and pool.ready_count == 1
        pool.unplaced = False
        pool.actors["m-1"].gate.set()  # resources appeared: Ray creates the actor
        await until(pool, lambda: pool.states()["m-1"] is S.READY)
        await pool.stop()

    run(scenario())


def test_pending_replica_that_gets_placed_goes_back_to_starting() -> None:
    async def scenario() -> None:
        pool = await started(1, open_gates=False, pending_after_s=0.02)
        pool.unplaced = True
        await pool.scale_to(2, wait=True)
        assert pool.states()["m-1"] is S.PENDING
        pool.unplaced = False  # placed: a worker is loading it
        await until(pool, lambda: pool.states()["m-1"] is S.STARTING)
        pool.actors["m-1"].gate.set()
        await until(pool, lambda: pool.states()["m-1"] is S.READY)
        await pool.stop()

    run(scenario())


def test_slow_but_placed_replica_stays_starting() -> None:
    async def scenario() -> None:
        pool = await started(1, open_gates=False, pending_after_s=0.02)
        await pool.scale_to(2)
        await elapse(0.1)  # five looks at its placement (pending_after_s)
        assert pool.states()["m-1"] is S.STARTING
        await pool.stop()

    run(scenario())


def test_scale_up_replaces_dead_replicas_and_counts_are_checked() -> None:
    async def scenario() -> None:
        pool = await started(2)
        pool.replicas()[1].state = S.DEAD
        await pool.scale_to(2, wait=True)
        assert pool.states() == {"m-0": S.READY, "m-2": S.READY}
        with pytest.raises(ValueError):
            await pool.scale_to(0)
        with pytest.raises(ValueError):
            await pool.scale_to(10_000)
        await pool.stop()
        with pytest.raises(RuntimeError):
            await pool.scale_to(2)

    run(scenario())


LIMITS = AutoscaleLimits(
    min_replicas=1,
    max_replicas=4,
    target_queued_tokens=100,
    up_window_s=1.0,
    down_idle_s=5.0,
    up_cooldown_s=2.0,
    down_cooldown_s=3.0,
)


def test_autoscale_up_needs_the_whole_window_above_target() -> None:
    policy = AutoscalePolicy(LIMITS, now=0.0)
    assert policy.decide(2.0, current=1, ready=1, queued_tokens=150, idle=False) is None
    assert policy.decide(2.5, current=1, ready=1, queued_tokens=50, idle=False) is None  # dipped: reset
    assert policy.decide(3.0, current=1, ready=1, queued_tokens=150, idle=False) is None
    assert policy.decide(4.0, current=1, ready=1, queued_tokens=250, idle=False) == 3  # ceil(250/100)


def test_autoscale_up_waits_for_cooldown_and_warm_replicas_and_stops_at_max() -> None:
    policy = AutoscalePolicy(LIMITS, now=0.0)
    assert policy.decide(0.5, current=1, ready=1, queued_tokens=900, idle=False) is None
    assert policy.decide(1.6, current=1, ready=1, queued_tokens=900, idle=False) is None  # cooldown
    assert policy.decide(2.1, current=1, ready=1, queued_tokens=900, idle=False) == 4  # capped at max
    # New replicas warming up: no further step until they are ready.
    assert policy.decide(9.0, current=4, ready=2, queued_tokens=900, idle=False) is None
    assert policy.decide(20.0, current=4, ready=4, queued_tokens=9000, idle=False) is None  # at max


def test_autoscale_down_one_step_per_idle_window_to_min() -> None:
    policy = AutoscalePolicy(LIMITS, now=0.0)
    assert policy.decide(1.0, current=3, ready=3, queued_tokens=0, idle=True) is None
    assert policy.decide(6.0, current=3, ready=3, queued_tokens=0, idle=True) == 2
    assert policy.decide(7.0, current=2, ready=2, queued_tokens=0, idle=True) is None
    assert policy.decide(12.0, current=2, ready=2, queued_tokens=0, idle=True) == 1
    assert policy.decide(30.0, current=1, ready=1, queued_tokens=0, idle=True) is None


def test_autoscale_off_and_out_of_range_counts() -> None:
    assert (
        AutoscalePolicy(AutoscaleLimits(), 0.0).decide(9, current=1, ready=1, queued_tokens=10**6, idle=False)
        is None
    )
    policy = AutoscalePolicy(LIMITS, now=0.0)
    assert policy.decide(0.1, current=6, ready=6, queued_tokens=0, idle=False) == 4
    assert AutoscaleLimits(min_replicas=2, max_replicas=3).clamp(1) == 2
    assert AutoscaleLimits().clamp(7) == 7


def test_replica_actors_are_spread_over_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from bertserve.workers.pool import Placement, ReplicaPool
    from bertserve.workers.spec import ReplicaSpec

    seen: dict[str, Any] = {}

    class FakeActorClass:
        def options(self, **kwargs: Any) -> str:
            seen.update(kwargs)
            return "cls"

    monkeypatch.setattr(ray, "remote", lambda cls: FakeActorClass())
    pool = ReplicaPool(ReplicaSpec(model_name="m", checkpoint="x"), 2, Placement(num_cpus=1, num_gpus=0.5))
    assert pool._actor_class() == "cls"
    assert seen["scheduling_strategy"] == "SPREAD" and seen["num_gpus"] == 0.5 and seen["num_cpus"] == 1
