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
hint, and nothing of it reaches a batcher queue. Nothing here ever waits. A permit is released
exactly once, on every path (answer, error, cancellation), by its context manager.

Limits of 1 and 1 mean: one request at a time in the model, and it is queued only into empty
queues. 0 means unlimited.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from bertserve.server.errors import Overloaded
from bertserve.server.metrics import AdmissionMetrics

# Retry hints (the `grpc-retry-pushback-ms` trailer): a batch time before any batch finished,
# and the range a hint is kept in.
DEFAULT_BATCH_S = 0.05
MIN_RETRY_MS = 10
MAX_RETRY_MS = 5000

REASON_INFLIGHT = "inflight"
REASON_QUEUED_TOKENS = "queued_tokens"
REASON_QUEUED_INPUTS = "queued_inputs"  # a batcher's own queue (max_queued_requests), see batcher.py


@dataclass(frozen=True)
class AdmissionLimits:
    """Per model; 0 means unlimited."""

    max_inflight: int = 1024
    max_queued_tokens: int = 262_144


def retry_hint_ms(batch_s: float | None, queued_inputs: int, per_round: int) -> int:
    """How long a rejected client should wait before trying again, in milliseconds.

    The time the model needs to drain what is ahead: the batch running now plus one batch round
    per `per_round` queued inputs (max batch size x ready replicas), each taking `batch_s` (the
    recent batch compute time; DEFAULT_BATCH_S before any batch finished). Kept within
    MIN_RETRY_MS..MAX_RETRY_MS.
    """
    seconds = batch_s if batch_s is not None and batch_s > 0 else DEFAULT_BATCH_S
    rounds = 1 + math.ceil(max(0, queued_inputs) / max(1, per_round))
    return int(min(MAX_RETRY_MS, max(MIN_RETRY_MS, round(seconds * rounds * 1000))))


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
    `retry_after_ms()` the retry hint of a rejection (see `retry_hint_ms`)."""

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
        # Called when a request is admitted while none was in flight (server/keep_warm.py).
        self.on_busy: Callable[[], None] | None = None

    @property
    def inflight(self) -> int:
        """Requests admitted and not yet released."""
        return self._inflight

    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens()

    def try_acquire(self) -> Permit:
        """A permit, or Overloaded at once when `max_inflight` requests are in flight."""
        limit = self.limits.max_inflight
        if limit and self._inflight >= limit:
            raise self._reject(
                REASON_INFLIGHT, f"the model has {limit} requests in flight, its limit; retry later"
            )
        self._inflight += 1
        if self._inflight == 1 and self.on_busy is not None:
            self.on_busy()
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
