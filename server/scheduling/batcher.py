"""Dynamic batching per (model, task): bounded queue, length grouping, padded-token budget.

A batch is sent as soon as a replica is idle (no added latency at low load: a request reaching an
idle server is sent from `submit` itself, and a batch's callers resume before its bookkeeping).
While every replica is busy, the batch for a replica's queued slot keeps filling until it is
full, its oldest input has waited `max_wait_s`, or a replica goes idle. With `fill_queued` it
keeps filling longer: until shortly before the replica's running batch is expected to end (a
line fitted to recent batches' compute time against their padded tokens, scheduling/estimate.py).
Its inputs could not start sooner anyway, and those that arrive meanwhile join it instead of
waiting a whole batch more; it is still sent before the replica needs it, so the replica does not
wait between batches. Every release on the router wakes the batchers that have queued inputs
(`Router.on_release`). Batches group inputs of similar length (around the oldest waiting input,
so nothing starves) under `max_batch_tokens` padded tokens. One replica call per batch
(workers/transport.py: the direct channel or a Ray actor call). How the batcher and the router
share the replicas' slots: server/scheduling/router.py.

With no replica ready (all restarting), a request whose deadline ends before a replica is expected
back (`Router.ready_eta`) fails at once with `Unavailable`, carrying the time until then as its
retry hint: when it is submitted, when the last ready replica goes away while it is queued
(`replicas_changed`), when its batch's replica fails and the retry would wait, and when the time
a replica was expected back passes without one. A request with no deadline, or with time enough,
waits for the replica.

Every batch sent to a replica is reported to the model's `ThroughputMeter` (estimate.py), which
the retry hints of rejections read (admission.Pushback).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bertserve.server.errors import DeadlineExceeded, Internal, Overloaded, ServingError, Unavailable
from bertserve.server.logs import get_logger
from bertserve.server.metrics import BatcherMetrics
from bertserve.server.scheduling.admission import bounded_hint_ms, retry_hint_ms
from bertserve.server.scheduling.estimate import BatchTimeModel, ThroughputMeter
from bertserve.server.scheduling.router import Lease, Router
from bertserve.server.scheduling.work import BatchCodec, ItemResult, WorkItem
from bertserve.workers.errors import ReplicaFailed


@dataclass(frozen=True)
class BatchLimits:
    max_batch_size: int
    max_batch_tokens: int
    max_wait_s: float
    max_queued: int
    # Real tokens / padded tokens a batch must keep (0: any padding).
    min_padding_efficiency: float = 0.0
    # Keep filling a busy replica's queued batch until its running batch is about to end
    # (Settings.fill_queued_batches).
    fill_queued: bool = False
    # Split the queue between replicas that can start it about as soon (Settings.share_batches).
    share: bool = False


# A queued batch is sent this long before the running batch's expected end: the larger of a
# fixed margin and a fraction of the estimate (the fitted line is only roughly right).
SEND_AHEAD_S = 0.005
SEND_AHEAD_FRACTION = 0.2


@dataclass
class BatcherStats:
    batches: int = 0
    sequences: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    retries: int = 0


def take_batch(
    queue: list[WorkItem], max_size: int, max_tokens: int, min_efficiency: float = 0.0
) -> list[WorkItem]:
    """Choose the next batch: the oldest item plus the items closest to it in length, while
    the batch stays within max_size sequences and max_tokens padded tokens, and its real tokens
    stay at least min_efficiency of its padded tokens. Removes them from the queue.

    The efficiency floor keeps a short input out of a long batch: on a CPU a batch costs about
    its padded tokens, so padding a 16-token input to 256 costs more than running it apart."""
    if not queue:
        return []
    oldest = queue[0]
    chosen = [oldest]
    longest = oldest.length
    real = oldest.length
    for item in sorted(queue[1:], key=lambda it: abs(it.length - oldest.length)):
        if len(chosen) >= max_size:
            break
        new_longest = max(longest, item.length)
        padded = new_longest * (len(chosen) + 1)
        if padded > max_tokens or real + item.length < min_efficiency * padded:
            continue
        chosen.append(item)
        longest = new_longest
        real += item.length
    taken = set(map(id, chosen))
    queue[:] = [it for it in queue if id(it) not in taken]
    return chosen


class Batcher:
    """One model's queue for one task. `name` is "model:task"; `metrics`, when given, receives
    what `stats` counts (and each batch's size and compute time) for Prometheus.

    `throughput` is the model's meter, shared by its batchers (its own when not given);
    `retry_after_ms` gives the retry hint of a full queue's rejection, once per rejection (the
    model's admission.Pushback; without it, this queue's and its meter's work over the meter's
    rate). `clock` is the monotonic clock that deadlines are read against and that `submit` stamps
    each input's `enqueued_at` with; it must keep time with the event loop's (time.monotonic does,
    and tests run the loop on virtual time), since the batcher waits on loop timers."""

    def __init__(
        self,
        name: str,
        codec: BatchCodec,
        router: Router,
        limits: BatchLimits,
        metrics: BatcherMetrics | None = None,
        *,
        throughput: ThroughputMeter | None = None,
        retry_after_ms: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._clock = clock
        self.throughput = throughput if throughput is not None else ThroughputMeter(clock=clock)
        self._retry_after_ms = retry_after_ms
        self._metrics = metrics
        self._codec = codec
        self._router = router
        self._limits = limits
        self._queue: list[WorkItem] = []
        self._queued_tokens = 0  # sum of the queue's item lengths
        # Compute time against padded tokens of recent batches (for fill_queued).
        self.batch_time = BatchTimeModel()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        # Batches whose replica failed, waiting for a replica to retry on (see _compute).
        self._retrying: list[list[WorkItem]] = []
        # A look at the waiting inputs when a replica is expected back (_look_again_when_due).
        self._recheck: asyncio.TimerHandle | None = None
        # The dispatcher (_run) is waiting for work: the queue was empty when it last looked.
        self._dispatcher_waiting = False
        self.stats = BatcherStats()
        self._log = get_logger(batcher=name)
        router.on_release(self.wake)  # a batch of another task that ends frees a slot too

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def queued_tokens(self) -> int:
        """Tokens of the inputs waiting in the queue (admission's max_queued_tokens counts these)."""
        return self._queued_tokens

    def retry_after_ms(self) -> int:
        """The retry hint of a rejection by this batcher (see the class docstring)."""
        if self._retry_after_ms is not None:
            return self._retry_after_ms()
        meter = self.throughput
        return retry_hint_ms(self._queued_tokens + meter.tokens_at_replicas, meter.rate())

    def submit(self, items: Sequence[WorkItem]) -> None:
        """Queue all items of one request, or none: RESOURCE_EXHAUSTED when the queue is full,
        UNAVAILABLE when no replica is ready and none is expected back before its deadline."""
        if len(self._queue) + len(items) > self._limits.max_queued:
            if self._metrics is not None:
                self._metrics.queue_full()
            raise Overloaded(
                f"the request queue is full ({self._limits.max_queued} inputs); retry later",
                retry_after_ms=self.retry_after_ms(),
            )
        now = self._clock()
        for item in items:
            item.enqueued_at = now
        none_ready = self._router.ready_replicas == 0
        if none_ready:
            eta = self._router.ready_eta()
            if any(self._too_late(it, eta) for it in items):
                raise self._not_back_in_time(eta)
        was_empty = not self._queue
        self._queue.extend(items)
        self._queued_tokens += sum(it.length for it in items)
        if none_ready:
            self._look_again_when_due()
        if was_empty and self._dispatcher_waiting and self._router.all_idle():
            # Nothing else waits and no replica has work: send the batch now, as the dispatcher
            # would on its next turn (one event-loop turn sooner for a lone request). Not under
            # load: there the dispatcher's turn lets requests arriving in this one join the batch.
            # Every ready replica is idle: a request of several inputs is shared between them.
            batch = self._next_batch(self._router.ready_replicas if self._limits.share else 1)
            if batch:
                lease = self._router.acquire_idle()
                assert lease is not None  # all_idle: a ready replica has no work
                self._dispatch(lease, batch)
            if not self._queue:
                return
        self._changed.set()

    def withdraw(self, items: Sequence[WorkItem]) -> None:
        """Take a request's items out of the queue (it was cancelled or failed), so that they stop
        counting as queued at once rather than when the next batch is formed."""
        gone = {id(it) for it in items}
        kept = [it for it in self._queue if id(it) not in gone]
        if len(kept) != len(self._queue):
            self._queue[:] = kept
            self._queued_tokens = sum(it.length for it in kept)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"batcher:{self.name}")

    async def stop(self) -> None:
        if self._recheck is not None:
            self._recheck.cancel()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for task in list(self._inflight):
            task.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)
        self._fail_all(Unavailable("the server is shutting down"))

    def wake(self) -> None:
        """Re-evaluate the queue (a replica went idle or changed state). An empty queue has nothing
        to re-evaluate: the next submit wakes the dispatcher."""
        if self._queue:
            self._changed.set()

    def replicas_changed(self) -> None:
        """A replica changed state: with none ready now, fail the inputs whose deadline ends
        before one is expected back (their callers would only wait for DEADLINE_EXCEEDED), queued
        or in a batch waiting to be retried; then re-evaluate the queue."""
        if self._fail_too_late(self._queue):
            self._queue[:] = [it for it in self._queue if not it.future.done()]
            self._queued_tokens = sum(it.length for it in self._queue)
        for batch in self._retrying:
            self._fail_too_late(batch)
        self._look_again_when_due()
        self.wake()

    def _look_again_when_due(self) -> None:
        """With no replica ready and inputs with a deadline still waiting for one, look at them
        again (`replicas_changed`) when a replica is expected back: one that is late is then
        expected a whole restart later (workers/pool.py), so the inputs that cannot wait that long
        fail then rather than at their deadline."""
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None
        if self._router.ready_replicas > 0:
            return
        waiting = [self._queue, *self._retrying]
        if not any(it.deadline is not None and not it.abandoned for items in waiting for it in items):
            return
        eta = self._router.ready_eta()
        if eta is None or not math.isfinite(eta):
            return
        delay = max(0.0, eta - self._clock())
        self._recheck = asyncio.get_running_loop().call_later(delay, self.replicas_changed)

    def _fail_too_late(self, items: Sequence[WorkItem]) -> bool:
        """With no replica ready, fail those of `items` that cannot wait for one; True when any
        did."""
        if not items or self._router.ready_replicas > 0:
            return False
        eta = self._router.ready_eta()
        late = [it for it in items if not it.abandoned and self._too_late(it, eta)]
        _fail(late, self._not_back_in_time(eta))
        return bool(late)

    def _ready_hint(self) -> int | None:
        """With no replica ready, the time until one is expected back, as a retry hint."""
        if self._router.ready_replicas > 0:
            return None
        return self._hint_until(self._router.ready_eta())

    def _hint_until(self, eta: float | None) -> int | None:
        if eta is None or not math.isfinite(eta):
            return None
        return bounded_hint_ms((eta - self._clock()) * 1000.0)

    def _too_late(self, item: WorkItem, eta: float | None) -> bool:
        """With no replica ready: `item` has a deadline and it ends before one is expected back
        (`eta`; None: not known, so no input counts as too late)."""
        return eta is not None and item.deadline is not None and item.deadline < eta

    def _not_back_in_time(self, eta: float | None) -> Unavailable:
        """The error of a request that no replica can be back for in time: retryable, with the
        time until one is expected as its hint (none when none is on its way)."""
        return Unavailable(
            "no replica of this model is ready, and none is expected back before the call's "
            "deadline; retry later",
            retry_after_ms=self._hint_until(eta),
        )

    async def _run(self) -> None:
        while True:
            await self._wait_for_work()
            try:
                lease = await self._router.acquire()
            except Unavailable as exc:
                self._fail_all(exc)
                continue
            if lease.queued:
                await self._fill(lease)
                if lease.queued and self._router.has_idle_replica():
                    # Another replica went idle while the batch filled: send it there rather than
                    # queue it behind the reserved replica's running batch.
                    lease.end()
                    lease = await self._router.acquire()
            batch = self._next_batch(self._share(lease))
            if not batch:
                lease.end()
                continue
            self._dispatch(lease, batch)

    def _dispatch(self, lease: Lease, batch: list[WorkItem]) -> None:
        task = asyncio.create_task(self._execute(lease, batch))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _wait_for_work(self) -> None:
        while not self._queue:
            self._changed.clear()
            self._dispatcher_waiting = True
            try:
                await self._changed.wait()
            finally:
                self._dispatcher_waiting = False

    async def _fill(self, lease: Lease) -> None:
        """Let the batch for a busy replica's queued slot fill: up to max_wait, or with
        fill_queued until shortly before the running batch is expected to end."""
        while self._queue:
            now = self._clock()
            until = self._queue[0].enqueued_at + self._limits.max_wait_s
            if self._limits.fill_queued and (running := lease.running()):
                since, expected_s = running
                ahead = max(SEND_AHEAD_S, SEND_AHEAD_FRACTION * expected_s)
                until = max(until, since + expected_s - ahead)
            remaining = until - now
            if remaining <= 0 or self._full() or self._router.has_idle_replica() or not lease.queued:
                return
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=remaining)
            except TimeoutError:
                return

    def _full(self) -> bool:
        if len(self._queue) >= self._limits.max_batch_size:
            return True
        return self._queued_tokens >= self._limits.max_batch_tokens

    def _share(self, lease: Lease) -> int:
        """Between how many replicas the queue's next batch shares the waiting inputs: the leased
        one and every other ready replica with a free slot that would start a batch before half of
        a batch of the whole queue had run on the leased one. Without it, a replica that turns
        idle as many requests arrive takes them all in one long batch while the other, a moment
        later, finds the queue empty and runs single inputs as its lone clients send them, over
        and over (what sharing brought: docs/benchmarks.md, "Optimisations", share_batches)."""
        if not self._limits.share or len(self._queue) < 2:
            return 1
        now = self._clock()
        starts_at = lease.starts_at(now)
        longest = max(it.length for it in self._queue)
        whole = self.batch_time.estimate(longest * min(len(self._queue), self._limits.max_batch_size))
        if starts_at is None:
            starts_at = now
        # Without an estimate yet, only replicas free no later than this one count.
        before = starts_at + (whole / 2 if whole is not None else 0.0)
        others = self._router.free_slot_starts(now, exclude=lease)
        return 1 + sum(1 for at in others if at is not None and at <= before)

    def _next_batch(self, share: int = 1) -> list[WorkItem]:
        """The next batch from the queue (inputs past their deadline fail first); with `share`
        > 1, at most its share of the waiting inputs (`_share`)."""
        now = self._clock()
        live: list[WorkItem] = []
        for item in self._queue:
            if item.abandoned:
                continue
            if item.deadline is not None and now >= item.deadline:
                item.future.set_exception(
                    DeadlineExceeded("the deadline passed while the request was queued")
                )
                continue
            live.append(item)
        self._queue[:] = live
        limits = self._limits
        max_size = limits.max_batch_size
        if share > 1:
            max_size = min(max_size, max(1, math.ceil(len(self._queue) / share)))
        batch = take_batch(self._queue, max_size, limits.max_batch_tokens, limits.min_padding_efficiency)
        self._queued_tokens = sum(it.length for it in self._queue)
        return batch

    async def _execute(self, lease: Lease, batch: list[WorkItem]) -> None:
        dispatched = self._clock()
        args = self._codec.collate(batch)
        tokens = sum(it.length for it in batch)
        padded = max(it.length for it in batch) * len(batch)
        computed = False
        self.throughput.sent(tokens)
        try:
            output, lease = await self._compute(lease, batch, args, padded)
            computed = True
        except ServingError as exc:
            _fail(batch, exc)
            return
        except asyncio.CancelledError:
            _fail(batch, Unavailable("the server is shutting down"))
            raise
        except Exception:
            self._log.exception("batch_error", batch_size=len(batch))
            _fail(batch, Internal("internal error while computing the batch"))
            return
        finally:
            self.throughput.ended(tokens, computed)
        compute_us = int(getattr(output, "compute_us", 0))
        replica_id = lease.replica.replica_id
        try:
            results = list(zip(batch, self._codec.split(output, batch), strict=True))
        except Exception:
            self._log.exception("batch_split_error", batch_size=len(batch))
            _fail(batch, Internal("internal error while reading the batch's results"))
            lease.end()  # wakes this batcher (on_release)
            return
        for item, out in results:
            if not item.future.done():
                queue_us = int((dispatched - item.enqueued_at) * 1e6)
                item.future.set_result(ItemResult(out, queue_us, compute_us, replica_id))
        lease.end(len(batch))  # wakes this batcher (on_release)
        # The callers answer their clients before this batch's bookkeeping: they resume first.
        await asyncio.sleep(0)
        self._account(lease, batch, compute_us, padded, tokens)

    async def _compute(
        self, lease: Lease, batch: list[WorkItem], args: tuple[Any, ...], padded: int
    ) -> tuple[Any, Lease]:
        """Run the batch on the leased replica; when the replica fails, once more (elsewhere when
        another replica is alive: inference is idempotent). Returns the output and the lease of
        the replica that computed it, not yet ended; whatever it raises, it has ended the leases
        it took."""
        tried: set[str] = set()
        attempts = 1
        expected_s = self.batch_time.estimate(padded)
        while True:
            tried.add(lease.replica.replica_id)
            try:
                return await lease.compute(self._codec.method, *args, expected_s=expected_s), lease
            except ReplicaFailed as exc:
                self._log.warning(
                    "batch_failed", replica=lease.replica.replica_id, batch_size=len(batch), error=str(exc)
                )
                lease.end()
            except BaseException:
                lease.end()  # wakes this batcher (on_release)
                raise
            if attempts >= 2:
                raise Unavailable(
                    "the replica computing this request failed", retry_after_ms=self._ready_hint()
                )
            attempts += 1
            self.stats.retries += 1
            if self._metrics is not None:
                self._metrics.retry()
            # The retry may wait for a replica to come back: the inputs whose deadline ends before
            # then fail now, and while it waits (`replicas_changed`); the batch goes on for the
            # others, if any are left.
            self._fail_too_late(batch)
            if all(it.abandoned for it in batch):
                raise self._not_back_in_time(self._router.ready_eta())
            self._retrying.append(batch)
            self._look_again_when_due()
            try:
                lease = await self._router.acquire(exclude=frozenset(tried))
            finally:
                self._retrying.remove(batch)
            if all(it.abandoned for it in batch):
                lease.end()
                raise self._not_back_in_time(self._router.ready_eta())

    def _account(self, lease: Lease, batch: list[WorkItem], compute_us: int, padded: int, real: int) -> None:
        """The batch time model, this batcher's counters, metrics and the log line of a computed
        batch of `padded` tokens with padding, `real` without (the replica's counts are the
        router's: `Lease.end`)."""
        if compute_us > 0:  # the replica's own time: without the trip there and back
            self.batch_time.add(padded, compute_us / 1e6)
        self.stats.batches += 1
        self.stats.sequences += len(batch)
        self.stats.real_tokens += real
        self.stats.padded_tokens += padded
        replica = lease.replica
        if self._metrics is not None:
            self._metrics.batch_done(
                size=len(batch),
                real_tokens=real,
                padded_tokens=padded,
                replica=replica.replica_id,
                compute_s=compute_us / 1e6,
                transport=replica.transport,
            )
        self._log.debug(
            "batch_done",
            replica=replica.replica_id,
            batch_size=len(batch),
            padded_tokens=padded,
            compute_us=compute_us,
        )

    def _fail_all(self, error: ServingError) -> None:
        items, self._queue = self._queue, []
        self._queued_tokens = 0
        _fail(items, error)


def _fail(items: Sequence[WorkItem], error: ServingError) -> None:
    for item in items:
        if not item.future.done():
            item.future.set_exception(error)
