"""Routes batches to replicas: least-loaded first, a bounded number of batches in flight each.

A replica with `depth` slots runs one batch and has the next already queued, so it never idles
between batches; the router never queues more than that on a replica.

Among idle replicas the one that finished a batch most recently goes first, so at low load the
work stays on a warm replica instead of alternating between replicas that have each sat idle
(Settings.replica_choice "warm", the default; for a single client it is faster, docs/benchmarks.md,
"Where a request's time goes"). Among equally busy replicas the one whose running batch started
first goes first: it frees up first. "spread" takes the replica with the fewest batches instead.

The router keeps one `ReplicaLoad` per replica of its source (the model's pool), created when the
replica appears and dropped when it leaves (`replicas_changed`, on every pool event): the slots
taken, the batches sent to it in order with the compute time expected of each and since when the
oldest has been running, and the batches and inputs it computed. Nothing else changes these
numbers; the pool (whom to probe, whom to remove first, when a draining replica is done) and
GetModelInfo read them here (`in_flight`, `drained`, `load`).

With no replica ready, `ready_eta` says when one is expected back (the pool's measured restart or
warm-up time, workers/pool.py `expected_ready_at`): the batcher fails at once the requests whose
deadline ends before then, instead of letting them wait for it.

The protocol between a batcher and the router, whole. A batcher changes the router's numbers only
through leases, and holds no per-replica number of its own:

1. `await router.acquire(exclude)` (waits for a free slot) or `router.acquire_idle()` (never waits)
   reserves a slot on the replica the router chooses and returns a `Lease` on it.
2. Before sending, the batcher may ask when a batch in that slot would start, to decide how long
   to let it fill and how to share the queue: `lease.queued` (another slot of the replica is
   taken), `lease.running()` (the running batch's start and expected compute time),
   `lease.starts_at(now)`, and `router.free_slot_starts(now, exclude=lease)` for the other replicas.
3. `await lease.compute(method, *args, expected_s=...)` sends the batch to the replica; the router
   notes it as sent, expected to compute for `expected_s` seconds. It raises ReplicaFailed when the
   replica failed.
4. `lease.end(sequences)` gives the slot back with the batch's outcome: the inputs the replica
   computed for it (0 when it failed, its results could not be used, or no batch was sent). The
   router counts them and calls back every batcher sharing it (`on_release`): the slot that freed
   may be the one a filling batch waits for.

Besides, the batcher reads whether replicas are ready and idle (`ready_replicas`, `ready_eta`,
`has_idle_replica`, `all_idle`). The router's `clock` (when a running batch started) is the
batcher's.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from bertserve.server.errors import Unavailable


class Replica(Protocol):
    """What the router needs of a replica (workers.pool.ReplicaHandle, or a test fake)."""

    replica_id: str

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

    def call(self, method: str, *args: Any) -> Awaitable[Any]: ...


class ReplicaSource(Protocol):
    def replicas(self) -> Sequence[Replica]: ...


class ReplicaLoad:
    """The router's record of one replica's load. Read-only outside the router."""

    __slots__ = (
        "batches",
        "in_flight",
        "released",
        "replica",
        "running_since",
        "sent",
        "sequences",
        "started",
    )

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.in_flight = 0  # slots reserved (leases not ended)
        self.batches = 0  # batches computed
        self.sequences = 0  # inputs computed
        # Event order (the router's counter; higher: more recent) of its latest release, and of
        # when its running batch started (on reaching an idle replica, or when its queued batch
        # began as the previous one was released).
        self.released = 0
        self.started = 0
        # The leases whose batch was sent to it, oldest (running) first, and since when (the
        # router's clock) the oldest has been running.
        self.sent: deque[Lease] = deque()
        self.running_since = 0.0


class Router:
    def __init__(
        self,
        source: ReplicaSource,
        depth: int = 2,
        prefer_warm: bool = True,
        ready_eta: Callable[[], float | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._depth = depth
        self._prefer_warm = prefer_warm
        self._ready_eta = ready_eta
        self._clock = clock
        self._loads: dict[str, ReplicaLoad] = {}
        self._events = 0  # the event order counter (ReplicaLoad.released, .started)
        # Set, and replaced, whenever a slot frees or a replica changes: `acquire` waits on it.
        self._changed = asyncio.Event()
        # Called on every release: the model's batchers (one per task) share this router, and a
        # batch filling for a replica's queued slot must hear when another task's batch ends there.
        self._on_release: list[Callable[[], None]] = []
        self._sync()

    def on_release(self, callback: Callable[[], None]) -> None:
        """Call `callback` whenever a slot is given back."""
        self._on_release.append(callback)

    def replicas_changed(self) -> None:
        """The source's replicas changed (one appeared, left or changed state): a record for
        every new one, none kept for those gone, and the waiters look again."""
        self._sync()
        self._wake()

    def _sync(self) -> None:
        # In the source's order: among equally loaded replicas the first listed goes first.
        loads: dict[str, ReplicaLoad] = {}
        for replica in self._source.replicas():
            load = self._loads.get(replica.replica_id)
            if load is None:
                load = ReplicaLoad(replica)
            load.replica = replica
            loads[replica.replica_id] = load
        self._loads = loads

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # ---- what others read --------------------------------------------------------------------

    def load(self, replica_id: str) -> ReplicaLoad | None:
        """The record of a replica of the source; None for one the router has not seen."""
        return self._loads.get(replica_id)

    def in_flight(self, replica_id: str) -> int:
        """Slots reserved on a replica (batches sent to it or about to be)."""
        load = self._loads.get(replica_id)
        return 0 if load is None else load.in_flight

    async def drained(self, replica_id: str) -> None:
        """Return once the replica holds no slot (a draining replica's last batch is back)."""
        while self.in_flight(replica_id) > 0:
            await self._changed.wait()

    @property
    def ready_replicas(self) -> int:
        return sum(1 for load in self._loads.values() if load.replica.ready)

    def ready_eta(self) -> float | None:
        """When a replica that is not ready now is expected to be (the source's clock); math.inf
        when none is on its way back (only replicas waiting for resources); None when not known
        (no estimate given: callers wait, as for a replica that may be back any moment)."""
        return None if self._ready_eta is None else self._ready_eta()

    def has_idle_replica(self) -> bool:
        return any(load.replica.ready and load.in_flight == 0 for load in self._loads.values())

    def all_idle(self) -> bool:
        """No ready replica has a batch (and at least one is ready)."""
        ready = [load for load in self._loads.values() if load.replica.ready]
        return bool(ready) and all(load.in_flight == 0 for load in ready)

    def free_slot_starts(self, now: float, exclude: Lease) -> list[float | None]:
        """When a batch would start in a free slot of every other ready replica that has one
        (None: not known, no estimate)."""
        return [_next_start(load, load.in_flight, now) for load in self._free() if load is not exclude.load]

    # ---- slots ---------------------------------------------------------------------------------

    def _free(self) -> list[ReplicaLoad]:
        return [load for load in self._loads.values() if load.replica.ready and load.in_flight < self._depth]

    def acquire_idle(self) -> Lease | None:
        """A slot on the idle ready replica that `acquire` would choose, or None when no replica
        is idle; never waits (scheduling is single-threaded, so nothing can change meanwhile)."""
        idle = [load for load in self._loads.values() if load.replica.ready and load.in_flight == 0]
        if not idle:
            return None
        return self._reserve(idle)

    async def acquire(self, exclude: frozenset[str] = frozenset()) -> Lease:
        """Reserve a slot on the least-loaded ready replica, waiting for one to free up.

        Raises Unavailable when no replica is alive (all dead), so callers never wait forever.
        `exclude` skips replicas (a retry goes elsewhere) unless they are the only ones alive.
        """
        while True:
            free = [load for load in self._free() if load.replica.replica_id not in exclude] or (
                self._free() if not self._others_alive(exclude) else []
            )
            if free:
                return self._reserve(free)
            if not any(load.replica.alive for load in self._loads.values()):
                raise Unavailable("no replica of this model is available")
            await self._changed.wait()

    def _reserve(self, candidates: list[ReplicaLoad]) -> Lease:
        """A slot on the candidate `_order` puts first; its first batch starts the clock."""
        chosen = min(candidates, key=self._order)
        chosen.in_flight += 1
        if chosen.in_flight == 1:
            chosen.started = self._event()
        return Lease(self, chosen)

    def _order(self, load: ReplicaLoad) -> tuple[int, int, int]:
        if not self._prefer_warm:
            return (load.in_flight, 0, load.batches)
        if load.in_flight == 0:  # idle: the one that finished last (warm) first
            return (0, -load.released, load.batches)
        return (load.in_flight, load.started, load.batches)

    def _event(self) -> int:
        self._events += 1
        return self._events

    def _others_alive(self, exclude: frozenset[str]) -> bool:
        return any(
            load.replica.alive and load.replica.replica_id not in exclude for load in self._loads.values()
        )

    def _sent(self, lease: Lease) -> None:
        load = lease.load
        if not load.sent:
            load.running_since = self._clock()
        load.sent.append(lease)

    def _end(self, lease: Lease, sequences: int) -> None:
        load = lease.load
        load.in_flight -= 1
        load.released = now = self._event()
        if load.in_flight > 0:  # its queued batch runs now
            load.started = now
        if lease in load.sent:
            was_running = load.sent[0] is lease
            load.sent.remove(lease)
            if was_running and load.sent:  # the next batch sent to it runs now
                load.running_since = self._clock()
        if sequences > 0:
            load.batches += 1
            load.sequences += sequences
        for callback in self._on_release:
            callback()
        self._wake()


def _next_start(load: ReplicaLoad, ahead: int, now: float) -> float | None:
    """When a batch would start on `load`'s replica behind `ahead` slots: `now` when none, else
    when its running batch is expected to end (None: not known)."""
    if ahead <= 0:
        return now
    running = _running(load)
    return None if running is None else max(now, running[0] + running[1])


def _running(load: ReplicaLoad) -> tuple[float, float] | None:
    """(since when, expected seconds) of the batch the replica is running, when it has one with
    an estimate: batches reach a replica in the order they were sent, and it runs them one at a
    time."""
    if not load.sent or load.sent[0].expected_s is None:
        return None
    return load.running_since, load.sent[0].expected_s


class Lease:
    """A slot on one replica, from `Router.acquire` (or `acquire_idle`) until `end`; compared by
    identity. See the module docstring for the protocol."""

    __slots__ = ("_ended", "_router", "expected_s", "load")

    def __init__(self, router: Router, load: ReplicaLoad) -> None:
        self._router = router
        self.load = load
        self.expected_s: float | None = None  # the sent batch's expected compute seconds
        self._ended = False

    @property
    def replica(self) -> Replica:
        return self.load.replica

    @property
    def queued(self) -> bool:
        """Another slot of the replica is taken: a batch in this one would wait for it."""
        return self.load.in_flight > 1

    def running(self) -> tuple[float, float] | None:
        """(since when, expected seconds) of the batch the replica is running, when it has one
        with an estimate."""
        return _running(self.load)

    def starts_at(self, now: float) -> float | None:
        """When a batch in this slot would start: `now` if nothing else is in flight on the
        replica, else when its running batch is expected to end; None when that is not known."""
        return _next_start(self.load, self.load.in_flight - 1, now)

    def compute(self, method: str, *args: Any, expected_s: float | None) -> Awaitable[Any]:
        """Send a batch to the replica (noted as sent at once, expected to compute for
        `expected_s` seconds; None: no estimate) and return its awaitable output."""
        self.expected_s = expected_s
        self._router._sent(self)
        return self.load.replica.call(method, *args)

    def end(self, sequences: int = 0) -> None:
        """Give the slot back with the batch's outcome: the inputs the replica computed for it
        (0 when it failed, its results could not be used, or no batch was sent). Idempotent."""
        if not self._ended:
            self._ended = True
            self._router._end(self, sequences)
