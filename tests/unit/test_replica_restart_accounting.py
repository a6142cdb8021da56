"""The pool keeps count of replica restarts Ray does behind its back, and gives up at once on a
replica Ray will not restart again (fake actors, no Ray cluster; virtual time,
tests/support/virtual_time.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from bertserve.workers.pool import Placement, ReplicaHandle, ReplicaPool, ReplicaState
from bertserve.workers.protocol import ReplicaReport
from bertserve.workers.spec import ReplicaSpec
from tests.support import virtual_time as vt


def _report(pid: int, load_error: str = "") -> ReplicaReport:
    return ReplicaReport("m-0", "cpu", "float32", (), "node-a", pid, 100, 64, load_error=load_error)


class _Method:
    def __init__(self, fn: Callable[[], Coroutine[Any, Any, ReplicaReport]]) -> None:
        self._fn = fn

    def remote(self) -> Coroutine[Any, Any, ReplicaReport]:
        return self._fn()


class FakeActor:
    """`ready()` answers with `answer()`: a report, or raises. `called` is set on every call."""

    def __init__(self, answer: Callable[[], ReplicaReport]) -> None:
        self.calls = 0
        self.called = asyncio.Event()

        async def ready() -> ReplicaReport:
            self.calls += 1
            self.called.set()
            return answer()

        self.ready = _Method(ready)


def _pool(actor: FakeActor, known_pid: int = 100, max_restarts: int = 3) -> tuple[ReplicaPool, ReplicaHandle]:
    pool = ReplicaPool(
        ReplicaSpec(model_name="m", checkpoint="x"),
        1,
        Placement(num_cpus=1),
        max_restarts=max_restarts,
        probe_interval_s=0.01,
        clock=vt.now,
    )
    pool.subscribe(actor.called.set)  # a change of the pool wakes the test too
    handle = ReplicaHandle("m-0", actor, pool)
    handle.state = ReplicaState.READY
    handle.report = _report(known_pid)
    pool._handles.append(handle)
    return pool, handle


async def _probe_until(pool: ReplicaPool, actor: FakeActor, calls: int) -> None:
    """Probe until the pool has handled `calls` answers of the actor. It probes one replica at a
    time, so an answer is handled once the next probe comes, or once the replica left READY
    (a pool change: no probe comes then)."""
    (handle,) = pool.replicas()
    task = asyncio.create_task(pool._probe_loop())
    try:
        while actor.calls <= calls and not (actor.calls == calls and not handle.ready):
            actor.called.clear()
            await actor.called.wait()
    finally:
        # As ReplicaPool.stop does: on Python < 3.12 a cancel that lands as a probe is answered
        # is lost in asyncio.wait_for, and the loop then ends at its next look at `_closed`.
        pool._closed = True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_probe_answered_by_a_new_process_counts_the_restart_and_updates_the_replica() -> None:
    actor = FakeActor(lambda: _report(pid=200))
    pool, handle = _pool(actor, known_pid=100)
    vt.run(_probe_until(pool, actor, calls=3))
    assert handle.state is ReplicaState.READY
    assert handle.restarts == 1  # once, not once per probe
    assert handle.report is not None and handle.report.pid == 200


def test_probe_answered_by_the_same_process_changes_nothing() -> None:
    actor = FakeActor(lambda: _report(pid=100))
    pool, handle = _pool(actor, known_pid=100)
    vt.run(_probe_until(pool, actor, calls=3))
    assert (handle.state, handle.restarts) == (ReplicaState.READY, 0)


def test_replica_restarted_without_its_model_is_dead() -> None:
    actor = FakeActor(lambda: _report(pid=200, load_error="cannot load weights"))
    pool, handle = _pool(actor, known_pid=100)
    vt.run(_probe_until(pool, actor, calls=1))
    assert handle.state is ReplicaState.DEAD


def test_recovery_gives_up_at_once_when_ray_will_not_restart_the_actor() -> None:
    import ray.exceptions

    def dead() -> ReplicaReport:
        raise ray.exceptions.ActorDiedError()

    actor = FakeActor(dead)
    pool, handle = _pool(actor)

    async def main() -> float:
        pool.replica_failed(handle, RuntimeError("the call failed"))
        assert handle.state is ReplicaState.RESTARTING
        start = vt.now()
        while handle.state is ReplicaState.RESTARTING:
            actor.called.clear()
            await actor.called.wait()  # a recovery probe, or the pool's change
        return vt.now() - start

    # Without this, recovery retried for 10 minutes while requests waited for the replica.
    assert vt.run(main(), 5) < 1.0
    assert handle.state is ReplicaState.DEAD
    assert actor.calls == 1
