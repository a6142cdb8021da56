"""The replica pool: creates Ray actors, tracks their readiness, notices crashes and restarts.

Runs in the front end's event loop. Ray restarts a crashed actor (`max_restarts`); the pool
marks it RESTARTING, takes it out of routing, and probes it until it answers again (READY) or
its restart budget is spent (DEAD). Every change (a state, a replica added or removed) calls the
pool's subscribers (`subscribe`), so that routing and health follow. How a batch reaches a
replica (the direct channel or a Ray actor call) is workers/transport.py's job; the batches each
replica holds are counted by the router, which the pool reads (`set_load_view`).

Scaling at run time (`scale_to`): a new replica starts in STARTING and takes traffic only once
its `ready()` answers (warm). One that Ray cannot place (no free CPUs/GPUs) is reported PENDING
after `pending_after_s`; Ray keeps it pending-creation (no retry loop here) and it turns READY by
itself when resources appear. A removed replica turns DRAINING: the router gives it no new
batch, its reserved and in-flight batches finish, and only then is the actor killed and dropped
from the pool. Victims: replicas not taking traffic first (pending, starting, restarting), then
the least busy, then the newest.

The pool measures how long a replica takes to turn READY after the failure that took it out (a
restart) or after its creation by a scale-up, on the injected `clock`; the latest measurements,
averaged, are `recovery_s`. Before the first, a replica is expected to take the longest warm-up
at start, but at least DEFAULT_RECOVERY_S: Ray may have started worker processes ahead at start,
which a restart has to start anew. `expected_ready_at` tells the router when a replica that is not
ready should be back, so that with every replica restarting at once a call whose deadline ends
sooner fails fast (server/scheduling/batcher.py) instead of waiting for nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from bertserve.workers.errors import ReplicaLoadError
from bertserve.workers.protocol import ReplicaReport
from bertserve.workers.replica import ReplicaActor
from bertserve.workers.spec import ReplicaSpec
from bertserve.workers.transport import ReplicaTransport, local_node_id

_log = structlog.get_logger("bertserve.pool")


class ReplicaState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    DEAD = "dead"
    # Created but not placed: the Ray cluster lacks the resources for it (yet).
    PENDING = "pending"
    # Being removed: takes no new batches, finishes the ones it has, then is killed.
    DRAINING = "draining"


# Which replicas a scale-down removes first (lowest rank first).
_REMOVAL_RANK = {
    ReplicaState.PENDING: 0,
    ReplicaState.STARTING: 1,
    ReplicaState.RESTARTING: 2,
    ReplicaState.READY: 3,
}
MAX_REPLICAS = 256
# The least time a replica is expected to take to come back before a restart was measured, in
# seconds: about what restarting a small model's replica process takes (docs/reliability.md,
# "Replica faults", has the measured figures).
DEFAULT_RECOVERY_S = 2.0
# Weight of the latest measurement in `recovery_s` (the rest: the measurements before it).
RECOVERY_WEIGHT = 0.5


@dataclass(frozen=True)
class Placement:
    """Ray resources for one replica."""

    num_cpus: float
    num_gpus: float = 0.0


class LoadView(Protocol):
    """The batches each replica holds, as the pool reads them: whom to probe (idle replicas only),
    whom to remove first, and when a draining replica is done. The router keeps these numbers
    (server/scheduling/router.py)."""

    def in_flight(self, replica_id: str) -> int: ...

    async def drained(self, replica_id: str) -> None: ...


class _NoLoad:
    """Before a router is attached (or in tests without one): no replica holds a batch."""

    def in_flight(self, replica_id: str) -> int:
        return 0

    async def drained(self, replica_id: str) -> None:
        return None


class ReplicaHandle:
    """The front end's view of one replica actor: its state in the pool and its calls."""

    def __init__(self, replica_id: str, actor: Any, pool: ReplicaPool, index: int = 0) -> None:
        self.replica_id = replica_id
        self.index = index  # creation order: higher is newer
        self.actor = actor
        self.state = ReplicaState.STARTING
        self.report: ReplicaReport | None = None
        self.restarts = 0
        # Since when it has been on its way to READY (created, or failed); None while it is not on
        # its way (ready, pending, draining or dead).
        self.down_since: float | None = None
        self._transport = ReplicaTransport(
            replica_id,
            actor,
            on_failure=lambda exc: pool.replica_failed(self, exc),
            direct_channel=pool.direct_channel,
            node_id=pool.local_node_id,
        )

    @property
    def ready(self) -> bool:
        return self.state is ReplicaState.READY

    @property
    def alive(self) -> bool:
        """May take work now or later (a draining replica never will)."""
        return self.state not in (ReplicaState.DEAD, ReplicaState.DRAINING)

    @property
    def transport(self) -> str:
        """How batches reach this replica now: "channel" (same-node Unix socket) or "ray"."""
        return self._transport.kind

    def call(self, method: str, *args: Any) -> Awaitable[Any]:
        """Run `method` on the replica (workers/transport.py). Raises ReplicaFailed when the
        replica died or is unreachable; the pool has then taken it out of routing."""
        return self._transport.call(method, *args)

    def turned_ready(self, report: ReplicaReport) -> None:
        """The replica (re)started and answered with `report`: calls go to its new process."""
        self.report = report
        self._transport.reset(report.node_id)

    def close_transport(self) -> None:
        self._transport.close()


class ReplicaPool:
    def __init__(
        self,
        spec: ReplicaSpec,
        num_replicas: int,
        placement: Placement,
        *,
        max_restarts: int = 3,
        probe_interval_s: float = 1.0,
        pending_after_s: float = 5.0,
        direct_channel: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self._clock = clock
        # How long a replica takes to turn READY, seconds (module docstring); None before any;
        # and the longest warm-up at start.
        self.recovery_s: float | None = None
        self.startup_s = 0.0
        # Same-node replicas take batches over a Unix socket (workers/channel.py).
        self.direct_channel = direct_channel
        self._local_node_id: str | None = None
        self.placement = placement
        self.max_restarts = max_restarts
        self._num = num_replicas
        self._probe_interval_s = probe_interval_s
        self._subscribers: list[Callable[[], None]] = []
        self._load: LoadView = _NoLoad()
        self._handles: list[ReplicaHandle] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._pending_after_s = pending_after_s
        self._next_index = 0
        self._scale_lock = asyncio.Lock()
        # Set when a replica leaves STARTING/PENDING or is dropped: `scale_to(wait=True)` waits on it.
        self._settled = asyncio.Event()

    def replicas(self) -> Sequence[ReplicaHandle]:
        return self._handles

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call `callback` on every change: a replica's state, a replica added or removed."""
        self._subscribers.append(callback)

    def _changed(self) -> None:
        for callback in self._subscribers:
            callback()

    def set_load_view(self, load: LoadView) -> None:
        """Read the batches each replica holds from `load` (the model's router)."""
        self._load = load

    def local_node_id(self) -> str:
        """The Ray node this front end runs on ("" outside Ray)."""
        if self._local_node_id is None:
            self._local_node_id = local_node_id()
        return self._local_node_id

    @property
    def ready_count(self) -> int:
        return sum(1 for h in self._handles if h.ready)

    def expected_ready_at(self) -> float:
        """When the soonest replica that is on its way to READY (starting or restarting) should be
        there, on the pool's clock: when it went down plus the time a replica takes to come back
        (module docstring); a replica already later than that is expected that time from now.
        math.inf when none is on its way (the rest are ready, pending placement, draining or
        dead)."""
        now = self._clock()
        recovery = self.recovery_s
        if recovery is None:
            recovery = max(self.startup_s, DEFAULT_RECOVERY_S)
        soonest = math.inf
        for handle in self._handles:
            on_its_way = handle.state in (ReplicaState.STARTING, ReplicaState.RESTARTING)
            if on_its_way and handle.down_since is not None:
                due = handle.down_since + recovery
                soonest = min(soonest, due if due > now else now + recovery)
        return soonest

    def _note_ready(self, handle: ReplicaHandle, at_start: bool) -> None:
        """Measure how long `handle` took to turn READY (when the pool saw it go down)."""
        if handle.down_since is None:
            return
        took = max(0.0, self._clock() - handle.down_since)
        handle.down_since = None
        if at_start:
            self.startup_s = max(self.startup_s, took)
            return
        previous = self.recovery_s
        self.recovery_s = took if previous is None else RECOVERY_WEIGHT * (took - previous) + previous

    @property
    def target(self) -> int:
        """Replicas the pool is meant to have: every one not draining or dead."""
        return sum(1 for h in self._handles if h.alive)

    def _new_handle(self, cls: Any) -> ReplicaHandle:
        index = self._next_index
        self._next_index += 1
        replica_id = f"{self.spec.model_name}-{index}"
        handle = ReplicaHandle(replica_id, self._create_actor(cls, replica_id, index), self, index)
        handle.down_since = self._clock()
        self._handles.append(handle)
        return handle

    def _create_actor(self, cls: Any, replica_id: str, index: int) -> Any:
        return cls.remote(self.spec, replica_id, index)

    def _actor_class(self) -> Any:
        import ray

        return ray.remote(ReplicaActor).options(
            num_cpus=self.placement.num_cpus,
            num_gpus=self.placement.num_gpus,
            max_restarts=self.max_restarts,
            max_task_retries=0,
            # Spread replicas over the cluster's nodes (Ray's default packs the local node first):
            # one node's failure then takes out as few replicas as possible.
            scheduling_strategy="SPREAD",
        )

    async def start(self, timeout_s: float) -> None:
        """Create the replicas and wait until every one is warm. Raises ReplicaLoadError with a
        one-line cause when a replica cannot load its model or cannot be placed in time."""
        cls = self._actor_class()
        for _ in range(self._num):
            self._new_handle(cls)
        warming = [asyncio.ensure_future(self._warm(h)) for h in self._handles]
        try:
            done, pending = await asyncio.wait(
                warming, timeout=timeout_s, return_when=asyncio.FIRST_EXCEPTION
            )
        finally:  # cancelled (a signal during start-up), failed or timed out: stop the others
            for task in warming:
                task.cancel()
            await asyncio.gather(*warming, return_exceptions=True)
        for task in done:
            task.result()  # a replica that could not load: its ReplicaLoadError
        if pending:
            waiting = [h.replica_id for h in self._handles if not h.ready]
            raise ReplicaLoadError(
                f"replicas {', '.join(waiting)} were not ready after {timeout_s:.0f}s: the Ray cluster may "
                f"lack the resources for them ({self.placement.num_cpus:g} CPUs and "
                f"{self.placement.num_gpus:g} GPUs each)"
            ) from None
        self._spawn(self._probe_loop())

    async def _warm(self, handle: ReplicaHandle) -> None:
        import ray.exceptions

        try:
            report: ReplicaReport = await handle.actor.ready.remote()
        except ray.exceptions.RayActorError as exc:
            raise ReplicaLoadError(f"replica {handle.replica_id} could not start: {_one_line(exc)}") from None
        if report.load_error:
            raise ReplicaLoadError(report.load_error)
        self._set_ready(handle, report, at_start=True)

    def _set_ready(self, handle: ReplicaHandle, report: ReplicaReport, *, at_start: bool = False) -> None:
        handle.turned_ready(report)
        handle.state = ReplicaState.READY
        self._note_ready(handle, at_start)
        _log.info(
            "replica_ready",
            replica=handle.replica_id,
            device=report.device,
            dtype=report.dtype,
            dtype_choice=report.dtype_choice,
            cpu_linear_choice=report.cpu_linear_choice,
            node=report.node_id,
            pid=report.pid,
            cpus=list(report.cpus),
        )
        self._changed()

    def _note_restart(self, handle: ReplicaHandle, report: ReplicaReport) -> None:
        """A probe answered from another process than the one the pool knew: Ray restarted the
        actor before any call failed (calls made while it restarts may wait for it instead of
        failing). Count the restart, so that ReplicaInfo and the restart budget stay true."""
        known = handle.report
        if not handle.ready or known is None or (report.pid, report.node_id) == (known.pid, known.node_id):
            return
        handle.restarts += 1
        if report.load_error:  # came back without its model: it will not serve
            handle.state = ReplicaState.DEAD
            _log.error("replica_dead", replica=handle.replica_id, error=report.load_error)
            self._changed()
            return
        _log.warning(
            "replica_restarted",
            replica=handle.replica_id,
            old_pid=known.pid,
            pid=report.pid,
            restarts=handle.restarts,
        )
        self._set_ready(handle, report)

    def replica_failed(self, handle: ReplicaHandle, exc: BaseException) -> None:
        """A call failed: take the replica out of routing and watch it come back."""
        if handle.state is not ReplicaState.READY or self._closed:
            return
        handle.restarts += 1
        budget_spent = 0 <= self.max_restarts < handle.restarts
        handle.state = ReplicaState.DEAD if budget_spent else ReplicaState.RESTARTING
        handle.down_since = None if budget_spent else self._clock()
        _log.warning(
            "replica_failed",
            replica=handle.replica_id,
            error=type(exc).__name__,
            restarts=handle.restarts,
            state=handle.state.value,
        )
        self._changed()
        if not budget_spent:
            self._spawn(self._recover(handle))

    async def _recover(self, handle: ReplicaHandle) -> None:
        import ray.exceptions

        delay = 0.1
        deadline = self._clock() + 600
        while not self._closed and handle.state is ReplicaState.RESTARTING and self._clock() < deadline:
            try:
                report: ReplicaReport = await asyncio.wait_for(handle.actor.ready.remote(), 30)
            except ray.exceptions.ActorDiedError:
                # Ray's restart budget is spent (a restarting actor answers ActorUnavailableError,
                # or queues the call): dead for good, so that requests fail fast, not in 10 min.
                break
            except (ray.exceptions.RayActorError, TimeoutError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if report.load_error or handle.state is not ReplicaState.RESTARTING:
                break
            self._set_ready(handle, report)
            return
        if not self._closed and handle.state is ReplicaState.RESTARTING:
            handle.state = ReplicaState.DEAD
            _log.error("replica_dead", replica=handle.replica_id)
            self._changed()

    async def _probe_loop(self) -> None:
        """Notice replicas that die while idle (busy ones fail their calls)."""
        import ray.exceptions

        while not self._closed:
            await asyncio.sleep(self._probe_interval_s)
            for handle in list(self._handles):
                if handle.ready and self._load.in_flight(handle.replica_id) == 0:
                    try:
                        report: ReplicaReport = await asyncio.wait_for(handle.actor.ready.remote(), 5)
                    except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                        self.replica_failed(handle, exc)
                    except TimeoutError:
                        pass
                    else:
                        self._note_restart(handle, report)

    async def scale_to(self, n: int, *, wait: bool = False) -> None:
        """Grow or shrink the pool to `n` replicas (1..MAX_REPLICAS); no request is dropped.

        New replicas take traffic once warm; removed ones drain first (module docstring). Dead
        replicas are dropped and replaced. With `wait`, return once the new replicas are READY
        or PENDING (or failed) and the removed ones are gone; otherwise at once.
        """
        if not 1 <= n <= MAX_REPLICAS:
            raise ValueError(f"replicas must be between 1 and {MAX_REPLICAS}, got {n}")
        if self._closed:
            raise RuntimeError("the replica pool is stopped")
        async with self._scale_lock:
            changed: list[ReplicaHandle] = []
            for handle in [h for h in self._handles if h.state is ReplicaState.DEAD]:
                self._drop(handle)
            active = [h for h in self._handles if h.alive]
            if n > len(active):
                cls = self._actor_class()
                for _ in range(n - len(active)):
                    handle = self._new_handle(cls)
                    changed.append(handle)
                    self._spawn(self._warm_new(handle))
            elif n < len(active):
                victims = sorted(
                    active,
                    key=lambda h: (_REMOVAL_RANK[h.state], self._load.in_flight(h.replica_id), -h.index),
                )
                for handle in victims[: len(active) - n]:
                    handle.state = ReplicaState.DRAINING
                    changed.append(handle)
                    self._spawn(self._drain(handle))
            _log.info("pool_scaling", model=self.spec.model_name, replicas=n, changed=len(changed))
            self._changed()
        if wait:
            while any(h.state in (ReplicaState.STARTING, ReplicaState.DRAINING) for h in changed):
                self._settled.clear()
                if not any(h.state in (ReplicaState.STARTING, ReplicaState.DRAINING) for h in changed):
                    break
                await self._settled.wait()

    def _settle(self) -> None:
        self._settled.set()
        self._changed()

    async def _warm_new(self, handle: ReplicaHandle) -> None:
        """Wait for a new replica's warm-up; report it PENDING while Ray cannot place it."""
        import ray.exceptions

        ready = asyncio.ensure_future(handle.actor.ready.remote())
        try:
            while True:
                done, _ = await asyncio.wait({ready}, timeout=self._pending_after_s)
                if done:
                    break
                if handle.state not in (ReplicaState.STARTING, ReplicaState.PENDING):
                    continue
                unplaced = await self._unplaced(handle)
                # Re-checked every period: a replica that was only slow to get a worker goes back
                # to STARTING once Ray gives it one.
                state = ReplicaState.PENDING if unplaced else ReplicaState.STARTING
                if (
                    handle.state in (ReplicaState.STARTING, ReplicaState.PENDING)
                    and handle.state is not state
                ):
                    handle.state = state
                    # Waiting for resources is not warm-up: measured from when it was placed.
                    handle.down_since = None if unplaced else self._clock()
                    if unplaced:
                        _log.warning(
                            "replica_pending",
                            replica=handle.replica_id,
                            num_cpus=self.placement.num_cpus,
                            num_gpus=self.placement.num_gpus,
                            notice="the Ray cluster lacks the resources; it starts when they appear",
                        )
                    self._settle()
            report: ReplicaReport = ready.result()
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
            if handle.state in (ReplicaState.STARTING, ReplicaState.PENDING) and not self._closed:
                handle.state = ReplicaState.DEAD
                _log.error("replica_start_failed", replica=handle.replica_id, error=_one_line(exc))
                self._settle()
            return
        finally:
            if not ready.done():
                ready.cancel()
        if handle.state not in (ReplicaState.STARTING, ReplicaState.PENDING) or self._closed:
            return  # removed (drained) while starting
        if report.load_error:
            handle.state = ReplicaState.DEAD
            _log.error("replica_start_failed", replica=handle.replica_id, error=report.load_error)
            self._settle()
            return
        self._set_ready(handle, report)
        self._settled.set()

    async def _unplaced(self, handle: ReplicaHandle) -> bool:
        """True when Ray has not placed the actor (pending creation for lack of resources)."""
        return await asyncio.to_thread(_actor_unplaced, handle.actor, self.placement)

    async def _drain(self, handle: ReplicaHandle) -> None:
        """Let a DRAINING replica finish its batches, then kill it and drop it."""
        await self._load.drained(handle.replica_id)
        self._kill(handle)
        self._drop(handle)
        handle.state = ReplicaState.DEAD  # out of the pool; only `scale_to(wait=True)` still looks
        _log.info("replica_removed", replica=handle.replica_id)
        self._settle()

    def _kill(self, handle: ReplicaHandle) -> None:
        handle.close_transport()
        with contextlib.suppress(Exception):
            import ray

            ray.kill(handle.actor, no_restart=True)

    def _drop(self, handle: ReplicaHandle) -> None:
        if handle in self._handles:
            self._handles.remove(handle)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Stop probing and release the actors."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for handle in self._handles:
            self._kill(handle)
            handle.state = ReplicaState.DEAD
        self._settled.set()
        self._changed()


def _actor_unplaced(actor: Any, placement: Placement) -> bool:
    """True when the actor waits for resources: the cluster lacks the CPUs/GPUs it asks for, and
    the GCS has not given it a worker process yet (Pid 0; a placed actor that is still loading
    has one). When the actor table cannot be read (a private API), the resource view decides
    alone. Blocking: run it in a thread."""
    import ray

    free: dict[str, float] = ray.available_resources()  # type: ignore[no-untyped-call]
    if (
        float(free.get("CPU", 0.0)) >= placement.num_cpus
        and float(free.get("GPU", 0.0)) >= placement.num_gpus
    ):
        return False
    try:
        from ray._private import state as ray_state

        info = ray_state.actors(actor._actor_id.hex())
    except Exception:
        return True
    return bool(info) and info.get("State") == "PENDING_CREATION" and not info.get("Pid")


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line:
            return line[:300]
    return lines[-1][:300] if lines else type(exc).__name__
