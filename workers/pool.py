"""The replica pool: creates Ray actors, tracks their readiness, notices crashes and restarts.

Runs in the front end's event loop. Ray restarts a crashed actor (`max_restarts`); the pool
marks it RESTARTING, takes it out of routing, and probes it until it answers again (READY) or
its restart budget is spent (DEAD). `on_change` fires on every state change, so health and
routing follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from bertserve.workers.errors import ReplicaFailed, ReplicaLoadError
from bertserve.workers.protocol import ReplicaReport
from bertserve.workers.replica import Replica
from bertserve.workers.spec import ReplicaSpec

_log = structlog.get_logger("bertserve.pool")


class ReplicaState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    DEAD = "dead"


@dataclass(frozen=True)
class Placement:
    """Ray resources for one replica."""

    num_cpus: float
    num_gpus: float = 0.0


class ReplicaHandle:
    """The front end's view of one replica actor."""

    def __init__(self, replica_id: str, actor: Any, pool: ReplicaPool) -> None:
        self.replica_id = replica_id
        self.actor = actor
        self.state = ReplicaState.STARTING
        self.report: ReplicaReport | None = None
        self.inflight = 0
        self.batches = 0
        self.sequences = 0
        self.restarts = 0
        self._pool = pool

    @property
    def ready(self) -> bool:
        return self.state is ReplicaState.READY

    @property
    def alive(self) -> bool:
        return self.state is not ReplicaState.DEAD

    async def call(self, method: str, *args: Any) -> Any:
        """Run `method` on the replica. Raises ReplicaFailed when the actor died or is unreachable."""
        import ray.exceptions

        try:
            return await getattr(self.actor, method).remote(*args)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
            self._pool.replica_failed(self, exc)
            raise ReplicaFailed(f"replica {self.replica_id} failed: {type(exc).__name__}") from None


class ReplicaPool:
    def __init__(
        self,
        spec: ReplicaSpec,
        num_replicas: int,
        placement: Placement,
        *,
        max_restarts: int = 3,
        probe_interval_s: float = 1.0,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.spec = spec
        self.placement = placement
        self.max_restarts = max_restarts
        self._num = num_replicas
        self._probe_interval_s = probe_interval_s
        self._on_change = on_change or (lambda: None)
        self._handles: list[ReplicaHandle] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def replicas(self) -> Sequence[ReplicaHandle]:
        return self._handles

    @property
    def ready_count(self) -> int:
        return sum(1 for h in self._handles if h.ready)

    def _actor_class(self) -> Any:
        import ray

        return ray.remote(Replica).options(
            num_cpus=self.placement.num_cpus,
            num_gpus=self.placement.num_gpus,
            max_restarts=self.max_restarts,
            max_task_retries=0,
        )

    async def start(self, timeout_s: float) -> None:
        """Create the replicas and wait until every one is warm. Raises ReplicaLoadError with a
        one-line cause when a replica cannot load its model or cannot be placed in time."""
        cls = self._actor_class()
        for i in range(self._num):
            replica_id = f"{self.spec.model_name}-{i}"
            self._handles.append(ReplicaHandle(replica_id, cls.remote(self.spec, replica_id), self))
        try:
            await asyncio.wait_for(asyncio.gather(*(self._warm(h) for h in self._handles)), timeout_s)
        except TimeoutError:
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
        self._set_ready(handle, report)

    def _set_ready(self, handle: ReplicaHandle, report: ReplicaReport) -> None:
        handle.report = report
        handle.state = ReplicaState.READY
        _log.info(
            "replica_ready",
            replica=handle.replica_id,
            device=report.device,
            dtype=report.dtype,
            node=report.node_id,
            pid=report.pid,
        )
        self._on_change()

    def replica_failed(self, handle: ReplicaHandle, exc: BaseException) -> None:
        """A call failed: take the replica out of routing and watch it come back."""
        if handle.state is not ReplicaState.READY or self._closed:
            return
        handle.restarts += 1
        budget_spent = 0 <= self.max_restarts < handle.restarts
        handle.state = ReplicaState.DEAD if budget_spent else ReplicaState.RESTARTING
        _log.warning(
            "replica_failed",
            replica=handle.replica_id,
            error=type(exc).__name__,
            restarts=handle.restarts,
            state=handle.state.value,
        )
        self._on_change()
        if not budget_spent:
            self._spawn(self._recover(handle))

    async def _recover(self, handle: ReplicaHandle) -> None:
        import ray.exceptions

        delay = 0.1
        deadline = time.monotonic() + 600
        while not self._closed and time.monotonic() < deadline:
            try:
                report: ReplicaReport = await asyncio.wait_for(handle.actor.ready.remote(), 30)
            except (ray.exceptions.RayActorError, TimeoutError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if report.load_error:
                break
            self._set_ready(handle, report)
            return
        if not self._closed:
            handle.state = ReplicaState.DEAD
            _log.error("replica_dead", replica=handle.replica_id)
            self._on_change()

    async def _probe_loop(self) -> None:
        """Notice replicas that die while idle (busy ones fail their calls)."""
        import ray.exceptions

        while not self._closed:
            await asyncio.sleep(self._probe_interval_s)
            for handle in list(self._handles):
                if handle.ready and handle.inflight == 0:
                    try:
                        await asyncio.wait_for(handle.actor.ready.remote(), 5)
                    except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                        self.replica_failed(handle, exc)
                    except TimeoutError:
                        pass

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Stop probing and release the actors."""
        import ray

        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for handle in self._handles:
            with contextlib.suppress(Exception):
                ray.kill(handle.actor, no_restart=True)
            handle.state = ReplicaState.DEAD
        self._on_change()


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line:
            return line[:300]
    return lines[-1][:300] if lines else type(exc).__name__
