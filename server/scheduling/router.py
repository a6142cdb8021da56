"""Routes batches to replicas: least-loaded first, a bounded number of batches in flight each.

A replica with `depth` slots runs one batch and has the next already queued, so it never idles
between batches; the router never queues more than that on a replica.

Among idle replicas the one that finished a batch most recently goes first, so at low load the
work stays on a warm replica instead of alternating between replicas that have each sat idle
(Settings.replica_choice "warm", the default; for a single client it is faster, docs/benchmarks.md,
"Where a request's time goes"). Among equally busy replicas the one whose running batch started
first goes first: it frees up first. "spread" takes the replica with the fewest batches instead.

The router also keeps, per replica, the batches sent to it in order with the compute time the
sending batcher expects of each (`note_batch`), and since when the first of them has been running,
so that a batcher can tell when a busy replica's running batch should end (`running_batch`).

With no replica ready, `ready_eta` says when one is expected back (the pool's measured restart or
warm-up time, workers/pool.py `expected_ready_at`): the batcher fails at once the requests whose
deadline ends before then, instead of letting them wait for it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from bertserve.server.errors import Unavailable


class Replica(Protocol):
    """What the router needs of a replica (workers.pool.ReplicaHandle, or a test fake)."""

    replica_id: str
    inflight: int
    batches: int
    sequences: int

    @property
    def ready(self) -> bool: ...

    @property
    def transport(self) -> str:
        """How batches reach the replica: "channel" (same-node socket) or "ray" (actor call)."""
        ...

    @property
    def alive(self) -> bool:
        """Ready, starting, pending or restarting: may take work (again). A draining replica
        (being removed by a scale-down) is not: it only finishes the batches it has."""
        ...

    async def call(self, method: str, *args: Any) -> Any: ...


class ReplicaSource(Protocol):
    def replicas(self) -> Sequence[Replica]: ...


class Router:
    def __init__(
        self,
        source: ReplicaSource,
        depth: int = 2,
        prefer_warm: bool = True,
        ready_eta: Callable[[], float | None] | None = None,
    ) -> None:
        self._source = source
        self._depth = depth
        self._prefer_warm = prefer_warm
        self._ready_eta = ready_eta
        self._changed = asyncio.Condition()
        # Event order (a counter, higher: more recent), per replica id: its latest release, and
        # when its running batch started (on reaching an idle replica, or when its queued batch
        # began as the previous one was released).
        self._clock = 0
        self._released: dict[str, int] = {}
        self._started: dict[str, int] = {}
        # Per replica id: the batches sent to it, oldest (running) first, as tokens holding the
        # expected compute seconds (None: no estimate); and when the oldest began running.
        self._sent: dict[str, deque[BatchNote]] = {}
        self._running_since: dict[str, float] = {}
        # Called on every release: the model's batchers (one per task) share this router, and a
        # batch filling for a replica's queued slot must hear when another task's batch ends there.
        self._on_release: list[Callable[[], None]] = []

    def on_release(self, callback: Callable[[], None]) -> None:
        """Call `callback` whenever a slot is released."""
        self._on_release.append(callback)

    @property
    def depth(self) -> int:
        return self._depth

    def _free(self) -> list[Replica]:
        return [r for r in self._source.replicas() if r.ready and r.inflight < self._depth]

    @property
    def ready_replicas(self) -> int:
        return sum(1 for r in self._source.replicas() if r.ready)

    def ready_eta(self) -> float | None:
        """When a replica that is not ready now is expected to be (the source's clock); math.inf
        when none is on its way back (only replicas waiting for resources); None when not known
        (no estimate given: callers wait, as for a replica that may be back any moment)."""
        return None if self._ready_eta is None else self._ready_eta()

    def has_idle_replica(self) -> bool:
        return any(r.ready and r.inflight == 0 for r in self._source.replicas())

    def all_idle(self) -> bool:
        """No ready replica has a batch (and at least one is ready)."""
        ready = [r for r in self._source.replicas() if r.ready]
        return bool(ready) and all(r.inflight == 0 for r in ready)

    def free_slot_start(self, replica: Replica, now: float) -> float | None:
        """When a batch in `replica`'s slot that `acquire` just reserved would start: `now` if
        nothing else is in flight there, else when its running batch is expected to end; None
        when that is not known (no estimate)."""
        return self._next_start(replica, max(0, replica.inflight - 1), now)

    def free_slot_starts(self, now: float, exclude: Replica) -> list[float | None]:
        """When a batch would start in a free slot of every other ready replica that has one."""
        return [self._next_start(r, r.inflight, now) for r in self._free() if r is not exclude]

    def _next_start(self, replica: Replica, in_flight: int, now: float) -> float | None:
        if in_flight <= 0:
            return now
        running = self.running_batch(replica)
        return None if running is None else max(now, running[0] + running[1])

    def acquire_idle(self) -> Replica | None:
        """A slot on the idle ready replica that `acquire` would choose, or None when no replica
        is idle; never waits (scheduling is single-threaded, so nothing can change meanwhile)."""
        idle = [r for r in self._source.replicas() if r.ready and r.inflight == 0]
        if not idle:
            return None
        return self._reserve(idle)

    async def acquire(self, exclude: frozenset[str] = frozenset()) -> Replica:
        """Reserve a slot on the least-loaded ready replica, waiting for one to free up.

        Raises Unavailable when no replica is alive (all dead), so callers never wait forever.
        `exclude` skips replicas (a retry goes elsewhere) unless they are the only ones alive.
        """
        async with self._changed:
            while True:
                free = [r for r in self._free() if r.replica_id not in exclude] or (
                    self._free() if not self._others_alive(exclude) else []
                )
                if free:
                    return self._reserve(free)
                if not any(r.alive for r in self._source.replicas()):
                    raise Unavailable("no replica of this model is available")
                await self._changed.wait()

    def _reserve(self, candidates: list[Replica]) -> Replica:
        """A slot on the candidate `_order` puts first; its first batch starts the clock."""
        chosen = min(candidates, key=self._order)
        chosen.inflight += 1
        if chosen.inflight == 1:
            self._started[chosen.replica_id] = self._tick()
        return chosen

    def _order(self, replica: Replica) -> tuple[int, int, int]:
        if not self._prefer_warm:
            return (replica.inflight, 0, replica.batches)
        if replica.inflight == 0:  # idle: the one that finished last (warm) first
            return (0, -self._released.get(replica.replica_id, 0), replica.batches)
        return (replica.inflight, self._started.get(replica.replica_id, 0), replica.batches)

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _others_alive(self, exclude: frozenset[str]) -> bool:
        return any(r.alive and r.replica_id not in exclude for r in self._source.replicas())

    def note_batch(self, replica: Replica, expected_s: float | None) -> BatchNote:
        """Record a batch sent to `replica` (on a slot reserved by `acquire`), expected to compute
        for `expected_s` seconds; pass the note back to `release` when the batch is done."""
        note = BatchNote(expected_s)
        sent = self._sent.setdefault(replica.replica_id, deque())
        if not sent:
            self._running_since[replica.replica_id] = time.monotonic()
        sent.append(note)
        return note

    def running_batch(self, replica: Replica) -> tuple[float, float] | None:
        """(since when, expected seconds) of the batch `replica` is running, when it has one
        with an estimate; batches reach a replica in the order they were sent, and it runs them
        one at a time."""
        sent = self._sent.get(replica.replica_id)
        if not sent or sent[0].expected_s is None:
            return None
        return self._running_since[replica.replica_id], sent[0].expected_s

    async def release(self, replica: Replica, note: BatchNote | None = None) -> None:
        """Free the slot `acquire` reserved; `note` (from `note_batch`) when a batch ran in it."""
        replica.inflight -= 1
        self._released[replica.replica_id] = now = self._tick()
        if replica.inflight > 0:  # its queued batch runs now
            self._started[replica.replica_id] = now
        sent = self._sent.get(replica.replica_id)
        if note is not None and sent is not None and note in sent:
            was_running = sent[0] is note
            sent.remove(note)
            if was_running and sent:  # the next batch sent to it runs now
                self._running_since[replica.replica_id] = time.monotonic()
        if len(self._released) > 2 * len(self._source.replicas()) + 8:  # ids of removed replicas
            current = {r.replica_id for r in self._source.replicas()}
            self._released = {k: v for k, v in self._released.items() if k in current}
            self._started = {k: v for k, v in self._started.items() if k in current}
            self._sent = {k: v for k, v in self._sent.items() if k in current}
            self._running_since = {k: v for k, v in self._running_since.items() if k in current}
        for callback in self._on_release:
            callback()
        await self.notify()

    async def notify(self) -> None:
        """Wake waiters: a slot freed or a replica changed state."""
        async with self._changed:
            self._changed.notify_all()


class BatchNote:
    """A batch sent to a replica (Router.note_batch): compared by identity."""

    __slots__ = ("expected_s",)

    def __init__(self, expected_s: float | None) -> None:
        self.expected_s = expected_s
