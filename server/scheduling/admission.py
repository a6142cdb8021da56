"""Admission control per model: bounded, try-acquire, fail fast.

Every request of a task that uses replicas (all but Tokenize) takes a `Permit` from its model's
`Admission` before any work is done for it, and holds it until it is answered. Two limits:

- `max_inflight`: requests admitted and not yet answered (unary calls and stream requests alike;
  queued, computing or being post-processed). Checked before tokenization.
- `max_queued_tokens`: tokens of inputs waiting in the model's batcher queues (every task; inputs
  sent to a replica no longer count). Checked after tokenization, just before the request's
  inputs are queued: a request is queued when its tokens fit under the limit with what is
  already waiting, or when nothing is waiting (so an input longer than the limit can still run).

Past either limit the request gets `Overloaded` (RESOURCE_EXHAUSTED) at once, carrying a retry
hint (`Pushback`), and nothing of it reaches a batcher queue. Nothing here ever waits. A permit is
released exactly once, on every path (answer, error, cancellation), by its context manager.

Limits of 1 and 1 mean: one request at a time in the model, and it is queued only into empty
queues. 0 means unlimited.

A call that a client sends again after a rejection says so (`x-retry-attempt: N`, the number of
attempts before it; the servicer notes it with `note_previous_attempts`). Such a call may pass
`max_inflight` by up to N (at most `MAX_RETRY_HEADROOM`): otherwise a caller whose call was just
answered, and who sends its next one at once, keeps taking the slot it freed, and a caller that
waited for its retry hint finds the model full again until it gives up.
"""

from __future__ import annotations

import contextvars
import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from bertserve.server.errors import Overloaded
from bertserve.server.metrics import AdmissionMetrics

# Retry hints (the `grpc-retry-pushback-ms` trailer), in milliseconds: the range a hint is kept in
# (at least a moment; at most what a client should be asked to wait for a guess), and how long the
# work in flight is assumed to take while the model has no measured rate yet (no batch computed).
MIN_RETRY_MS = 10
MAX_RETRY_MS = 5000
DEFAULT_RETRY_MS = 100
# Rejected calls a model's `Pushback` remembers at most (past it, more are not counted: by then the
# hint is at MAX_RETRY_MS for any realistic rate).
MAX_DEFERRED = 4096
# How far past max_inflight a retried call may be admitted (its previous attempts, at most this).
MAX_RETRY_HEADROOM = 4

# Previous attempts of the call running in this task (the servicer notes them; 0 for stream requests).
_previous_attempts: contextvars.ContextVar[int] = contextvars.ContextVar("bertserve_attempts", default=0)


def note_previous_attempts(attempts: int) -> None:
    """Record how many attempts the client made before the call running in this task."""
    _previous_attempts.set(max(0, attempts))


# How long a rejected call counts as work that comes back, in hints: bertserve's client comes back
# between one and four hints later (decorrelated jitter, client/bertserve_client/_rpc.py), 2.5 on
# average; a client that waits exactly the hint (gRPC's own retries) is counted longer than it is
# away.
DEFERRED_HOLD = 2.5

REASON_INFLIGHT = "inflight"
REASON_QUEUED_TOKENS = "queued_tokens"
REASON_QUEUED_INPUTS = "queued_inputs"  # a batcher's own queue (max_queued_requests), see batcher.py


@dataclass(frozen=True)
class AdmissionLimits:
    """Per model; 0 means unlimited."""

    max_inflight: int = 1024
    max_queued_tokens: int = 262_144


def retry_hint_ms(work_tokens: float, rate: float | None) -> int:
    """How long a rejected client should wait before trying again, in milliseconds: the time the
    model needs to get through `work_tokens` tokens at `rate`, the tokens per second its replicas
    got through recently (estimate.ThroughputMeter); DEFAULT_RETRY_MS without a rate. Kept within
    MIN_RETRY_MS..MAX_RETRY_MS."""
    ms = DEFAULT_RETRY_MS if rate is None or rate <= 0.0 else max(0.0, work_tokens) / rate * 1000.0
    return bounded_hint_ms(ms)


def bounded_hint_ms(ms: float) -> int:
    """`ms` rounded, within MIN_RETRY_MS..MAX_RETRY_MS: what every retry hint is kept to."""
    return int(min(MAX_RETRY_MS, max(MIN_RETRY_MS, round(ms))))


class Pushback:
    """The retry hints of one model's rejections: each rejected call is told to come back once the
    work ahead of it is done.

    The work ahead is the tokens waiting in the model's queues and at its replicas (`work_tokens`),
    plus the calls rejected before this one that have not come back yet: until about when it is
    expected back (DEFERRED_HOLD hints), a rejected call counts as work that will return. Without
    them, callers rejected together are all told about the same time and collide again; with them,
    the k-th of a burst of rejections is told about k calls' work later than the first, so the
    burst comes back spread over the time the model needs for it. A rejected call's tokens are
    estimated as the mean of the calls in flight (`inflight`): the in-flight limit rejects before
    tokenizing.

    `reject()` is called once per rejection. `rate` gives the measured tokens per second (None
    before any: the work in flight is then assumed to take DEFAULT_RETRY_MS, so that the first
    burst of rejections, before any batch has finished, is spread too). `clock` is injected so
    that tests control time.
    """

    def __init__(
        self,
        work_tokens: Callable[[], int],
        inflight: Callable[[], int],
        rate: Callable[[], float | None],
        clock: Callable[[], float] = time.monotonic,
        max_deferred: int = MAX_DEFERRED,
    ) -> None:
        self._work_tokens = work_tokens
        self._inflight = inflight
        self._rate = rate
        self._clock = clock
        self._max_deferred = max_deferred
        # Rejected calls not back yet, as (when they are expected back, estimated tokens).
        self._deferred: list[tuple[float, float]] = []
        self._deferred_tokens = 0.0
        self._per_call = 0.0  # tokens of a call in flight, on average, when last measured

    @property
    def deferred(self) -> int:
        """Rejected calls counted as coming back (not expected back yet)."""
        self._expire(self._clock())
        return len(self._deferred)

    def _expire(self, now: float) -> None:
        while self._deferred and self._deferred[0][0] <= now:
            _, tokens = heapq.heappop(self._deferred)
            self._deferred_tokens -= tokens
        if not self._deferred:
            self._deferred_tokens = 0.0  # no float drift left behind

    def reject(self) -> int:
        """The hint of one more rejected call, in milliseconds; the call then counts as work that
        comes back, until DEFERRED_HOLD hints from now."""
        now = self._clock()
        self._expire(now)
        work = self._work_tokens()
        inflight = self._inflight()
        if work > 0 and inflight > 0:
            self._per_call = work / inflight
        ahead = work + self._deferred_tokens
        rate = self._rate()
        if rate is None and work > 0:
            ms = bounded_hint_ms(DEFAULT_RETRY_MS * ahead / work)
        else:
            ms = retry_hint_ms(ahead, rate)
        if len(self._deferred) < self._max_deferred:
            heapq.heappush(self._deferred, (now + DEFERRED_HOLD * ms / 1000.0, self._per_call))
            self._deferred_tokens += self._per_call
        return ms


class Permit:
    """One admitted request. Use as a context manager; `release()` is idempotent."""

    __slots__ = ("_admission", "_released")

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._released = False

    def admit_tokens(self, tokens: int) -> None:
        """Check the queued-token limit for `tokens` more; call right before queueing them (with
        no await in between). Raises Overloaded; the permit stays held until released."""
        self._admission.check_tokens(tokens)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._admission._release()

    def __enter__(self) -> Permit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


class Admission:
    """One model's admission. `queued_tokens()` reads the tokens waiting in its batcher queues;
    `retry_after_ms()` gives the retry hint of a rejection, once per rejection (`Pushback.reject`)."""

    def __init__(
        self,
        limits: AdmissionLimits,
        queued_tokens: Callable[[], int],
        retry_after_ms: Callable[[], int],
        metrics: AdmissionMetrics | None = None,
    ) -> None:
        self.limits = limits
        self._queued_tokens = queued_tokens
        self._retry_after_ms = retry_after_ms
        self._metrics = metrics
        self._inflight = 0

    @property
    def inflight(self) -> int:
        """Requests admitted and not yet released."""
        return self._inflight

    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens()

    def try_acquire(self) -> Permit:
        """A permit, or Overloaded at once when `max_inflight` requests are in flight (a retried
        call: `max_inflight` plus its previous attempts, at most MAX_RETRY_HEADROOM more)."""
        limit = self.limits.max_inflight
        if limit and self._inflight >= limit + min(_previous_attempts.get(), MAX_RETRY_HEADROOM):
            raise self._reject(
                REASON_INFLIGHT, f"the model has {limit} requests in flight, its limit; retry later"
            )
        self._inflight += 1
        return Permit(self)

    def check_tokens(self, tokens: int) -> None:
        limit = self.limits.max_queued_tokens
        if not limit:
            return
        queued = self._queued_tokens()
        if queued > 0 and queued + tokens > limit:
            raise self._reject(
                REASON_QUEUED_TOKENS,
                f"the model's queues hold {queued} tokens; this request's {tokens} would pass the "
                f"limit of {limit}; retry later",
            )

    def _reject(self, reason: str, message: str) -> Overloaded:
        if self._metrics is not None:
            self._metrics.rejected(reason)
        return Overloaded(message, retry_after_ms=self._retry_after_ms())

    def _release(self) -> None:
        self._inflight -= 1
