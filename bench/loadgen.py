"""The load generator: closed loop (C clients, each sends its next request when the last one is
answered) and open loop (requests arrive at a fixed rate whatever the server does), over any
async `send(item)`. Latency is measured per request, client side; a sender that returns the
replica's compute time for the request (bertserve's FillMask senders) gets it paired with the
request's latency (`RunResult.own_overhead_ms`).

Every function reads time from its `clock` (time.perf_counter unless given): the unit tests run
them on an event loop with virtual time and pass its clock."""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# A sender may return the replica's compute time for the request (ms, from the response's Timing):
# RunResult then pairs it with the request's latency (`own_overhead_ms`).
Send = Callable[[Any], Awaitable[float | None]]
Clock = Callable[[], float]


@dataclass
class RunResult:
    mode: str  # "closed" or "open"
    load: float  # concurrency (closed) or offered requests/s (open)
    duration_s: float
    requests: int = 0
    sequences: int = 0
    errors: int = 0
    latencies_s: list[float] = field(default_factory=list)
    first_error: str = ""
    # Where each block of an interleaved run starts in latencies_s (interleaved_single_client).
    block_starts: list[int] = field(default_factory=list)
    # The replica's compute time of each measured request (ms), when its sender returns it.
    compute_ms: list[float] = field(default_factory=list)

    def own_overhead_ms(self) -> float:
        """Median over requests of latency minus the replica's compute time for that same request:
        what the server and the network add, free of the machine's speed drift, which moves the
        compute and the latency alike. NaN unless every measured request reported its compute."""
        if not self.latencies_s or len(self.compute_ms) != len(self.latencies_s):
            return float("nan")
        return statistics.median(s * 1000 - c for s, c in zip(self.latencies_s, self.compute_ms, strict=True))

    def compute_p50_ms(self) -> float:
        return statistics.median(self.compute_ms) if self.compute_ms else float("nan")

    def blocks_ms(self) -> list[list[float]]:
        """The latencies of each block, in milliseconds (one block if the run had none)."""
        starts = self.block_starts or [0]
        ends = [*starts[1:], len(self.latencies_s)]
        return [[s * 1000 for s in self.latencies_s[a:b]] for a, b in zip(starts, ends, strict=True)]

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def sequences_per_s(self) -> float:
        return self.sequences / self.duration_s if self.duration_s else 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
        return ordered[index] * 1000

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "load": self.load,
            "duration_s": round(self.duration_s, 3),
            "requests": self.requests,
            "errors": self.errors,
            "first_error": self.first_error,
            "requests_per_s": round(self.requests_per_s, 2),
            "sequences_per_s": round(self.sequences_per_s, 2),
            "p50_ms": round(self.percentile_ms(50), 2),
            "p90_ms": round(self.percentile_ms(90), 2),
            "p99_ms": round(self.percentile_ms(99), 2),
        }


async def _timed(
    send: Send,
    item: Any,
    result: RunResult,
    per_request: int,
    measuring: Callable[[], bool],
    clock: Clock = time.perf_counter,
) -> None:
    start = clock()
    try:
        compute_ms = await send(item)
    except Exception as exc:  # counted, never hidden: the report shows errors and the first one
        if measuring():
            result.errors += 1
            result.first_error = result.first_error or f"{type(exc).__name__}: {str(exc)[:200]}"
        return
    if measuring():
        result.requests += 1
        result.sequences += per_request
        result.latencies_s.append(clock() - start)
        if compute_ms is not None:
            result.compute_ms.append(compute_ms)


async def interleaved_single_client(
    senders: dict[str, Send],
    items: Sequence[Any],
    reference: Callable[[int], list[float]],
    blocks: int,
    per_block: int,
    warmup: int = 5,
    clock: Clock = time.perf_counter,
) -> tuple[dict[str, RunResult], list[float]]:
    """One client at a time, sending `items` in order, in `blocks` blocks of `per_block` requests
    per sender; before each block, `reference(per_block)` times the same inputs some other way
    (bench/bare.py: the bare forward pass) and returns milliseconds. Every side thus spans the
    same minutes, so the machine's speed drift affects all alike, and the senders take turns at
    going first after the reference (block b starts with sender b mod n), so none always meets
    the server just after its idle spell. Returns each sender's result (with `block_starts`) and
    the reference times (ms), `per_block` of them per block."""
    for send in senders.values():
        for item in items[:warmup]:
            await send(item)
    results = {name: RunResult("closed", 1, 0.0) for name in senders}
    reference_ms: list[float] = []
    names = list(senders)
    for b in range(blocks):
        reference_ms += await asyncio.to_thread(reference, per_block)
        for name in names[b % len(names) :] + names[: b % len(names)]:
            send, result = senders[name], results[name]
            result.block_starts.append(len(result.latencies_s))
            block_start = clock()
            for i in range(per_block):
                await _timed(send, items[(b * per_block + i) % len(items)], result, 1, lambda: True, clock)
            result.duration_s += clock() - block_start
    return results, reference_ms


class Window:
    """A closed loop's measured window: from `start` for `seconds`, extended by `seconds` at a
    time (up to `max_extra_s`) while fewer than `min_requests` requests have finished inside it.
    On a slow host a batch can outlast a fixed window (256-token inputs took about 1 s each on
    one vCPU of the EPYC host, and a batch holds up to 32), and a window that few batches end in
    measures the batching, not the rate.

    `open_at` decides lazily: every request is checked when it finishes, before it is counted, so
    the count at a boundary is the count when the first check after it runs."""

    def __init__(self, start: float, seconds: float, min_requests: int = 0, max_extra_s: float = 0.0):
        self.start = start
        self.end = start + seconds
        self.seconds = seconds  # the window's length so far (end - start, without rounding)
        self._step = seconds
        self._latest = self.end + max_extra_s
        self._min_requests = min_requests
        self._closed = False

    def open_at(self, now: float, finished: int) -> bool:
        if now < self.start:
            return False
        while now > self.end:
            if self._closed or finished >= self._min_requests or self.end + self._step > self._latest:
                self._closed = True
                return False
            self.end += self._step
            self.seconds += self._step
        return True


async def closed_loop(
    send: Send,
    items: Sequence[Any],
    concurrency: int,
    duration_s: float,
    warmup_s: float = 1.0,
    per_request: int = 1,
    min_requests: int = 0,
    max_extra_s: float = 0.0,
    max_settle_s: float = 0.0,
    abandon_at_end: bool = False,
    clock: Clock = time.perf_counter,
) -> RunResult:
    """`concurrency` clients each send items back to back; only requests that finish inside the
    measured window count.

    The window opens after `warmup_s`, or, with `max_settle_s`, once every client has had its
    first answer (at most `max_settle_s` later): the C requests sent at once at the start are
    a burst the server works off for a while, not its steady state. It lasts `duration_s`,
    longer while fewer than `min_requests` have finished in it (see Window). Then each client's
    last request is awaited, or with `abandon_at_end` cancelled when the window closes (for the
    last point before the server is stopped: those requests would not count, and a queue of
    them can take longer than the point)."""
    result = RunResult("closed", concurrency, duration_s)
    begin = clock()
    earliest = begin + warmup_s
    answered: set[int] = set()
    all_answered_at = math.inf
    window: Window | None = None

    def current() -> Window | None:
        """The window, opened lazily at the first check after its start (see the docstring)."""
        nonlocal window
        if window is None:
            start = max(earliest, min(all_answered_at, earliest + max_settle_s))
            if clock() >= start:
                window = Window(start, duration_s, min_requests, max_extra_s)
        return window

    def measuring() -> bool:
        w = current()
        return w is not None and w.open_at(clock(), result.requests)

    def sending() -> bool:
        return current() is None or measuring()

    async def client(k: int) -> None:
        nonlocal all_answered_at
        i = k
        while sending():
            await _timed(send, items[i % len(items)], result, per_request, measuring, clock)
            if k not in answered:
                answered.add(k)
                if len(answered) == concurrency:
                    all_answered_at = clock()
            i += concurrency

    clients = [asyncio.ensure_future(client(k)) for k in range(concurrency)]
    if abandon_at_end:
        while sending():
            w = current()
            await asyncio.sleep(max(0.0, w.end - clock()) + 0.001 if w else 0.01)
        for task in clients:
            task.cancel()
    for outcome in await asyncio.gather(*clients, return_exceptions=True):
        if isinstance(outcome, Exception):
            raise outcome
    result.duration_s = window.seconds if window is not None else 0.0
    return result


async def open_loop(
    send: Send,
    items: Sequence[Any],
    rate: float,
    duration_s: float,
    warmup_s: float = 1.0,
    per_request: int = 1,
    max_outstanding: int = 2048,
    clock: Clock = time.perf_counter,
) -> RunResult:
    """Start a request every 1/rate seconds (whatever the server does) for warmup + duration;
    latency includes any queueing in the server. Past max_outstanding unanswered requests the
    generator counts the arrival as an error instead of piling up memory."""
    result = RunResult("open", rate, duration_s)
    start = clock()
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s
    pending: set[asyncio.Task[None]] = set()

    def measuring_arrival(t: float) -> Callable[[], bool]:
        return lambda: measure_from <= t <= stop_at

    n = 0
    while True:
        due = start + n / rate
        if due > stop_at:
            break
        delay = due - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(pending) >= max_outstanding:
            if measure_from <= due:
                result.errors += 1
                result.first_error = result.first_error or "load generator: too many outstanding requests"
        else:
            task = asyncio.create_task(
                _timed(send, items[n % len(items)], result, per_request, measuring_arrival(due), clock)
            )
            pending.add(task)
            task.add_done_callback(pending.discard)
        n += 1
    await asyncio.gather(*pending)
    return result
