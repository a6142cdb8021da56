"""Estimates from recent batches: how long a batch will compute (`BatchTimeModel`) and how many
tokens per second a model's replicas get through (`ThroughputMeter`, for retry hints).

Batch time: a line fitted to recent batches, time = fixed + per token x tokens.

On a CPU a batch's time is nearly linear in its padded tokens with a large fixed part (for
bert-base a short input costs far more per token than a long one; measured figures per input
length: docs/benchmarks.md), so time per token alone overestimates large batches and
underestimates small ones. The fit weighs recent batches more (each older batch
counts `decay` times less), so it follows a replica that speeds up or slows down.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class BatchTimeModel:
    def __init__(self, decay: float = 0.9) -> None:
        self._decay = decay
        # Exponentially weighted sums over batches: weight, tokens, seconds, tokens^2, tokens*seconds.
        self._w = self._x = self._y = self._xx = self._xy = 0.0

    def add(self, tokens: int, seconds: float) -> None:
        """A computed batch: its padded tokens and the replica's compute time."""
        d = self._decay
        self._w = d * self._w + 1.0
        self._x = d * self._x + tokens
        self._y = d * self._y + seconds
        self._xx = d * self._xx + tokens * tokens
        self._xy = d * self._xy + tokens * seconds

    def estimate(self, tokens: int) -> float | None:
        """Expected compute seconds of a batch of `tokens` padded tokens; None before any batch.
        With too little spread in the batches seen so far to fit a line (or a line that would
        not make sense: falling with size, or negative at zero), time per token on average."""
        if self._w == 0.0:
            return None
        spread = self._w * self._xx - self._x * self._x
        if spread > 1e-9 * self._w * self._xx:
            slope = (self._w * self._xy - self._x * self._y) / spread
            fixed = (self._y - slope * self._x) / self._w
            if slope > 0.0 and fixed >= 0.0:
                return fixed + slope * tokens
        return tokens * self._y / self._x if self._x else None


class ThroughputMeter:
    """The tokens per second a model's replicas got through recently, and the tokens they hold now.

    Every batcher of a model reports the batches it sends to a replica (`sent`) and their end
    (`ended`). The rate is the real tokens of the batches that ended within the last `window_s`
    seconds over the time the replicas were busy in it (at least one batch at a replica): an idle
    spell does not dilute it, so the first rejections of a burst that follows a quiet period get
    the rate of the replicas at work, not a rate near zero. Until a batch has ended there is no
    rate (None). `clock` is injected so that tests control time.
    """

    def __init__(self, window_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._window_s = window_s
        self._clock = clock
        self._batches = 0  # batches at replicas now
        self.tokens_at_replicas = 0
        self._done = 0  # tokens of every batch computed so far
        self._busy = 0.0  # busy seconds before the current busy spell
        self._busy_since: float | None = None
        # (time, tokens done, busy seconds) at every batch end and at the start of every busy
        # spell; the oldest kept is the last one at or before the window's start.
        self._samples: deque[tuple[float, int, float]] = deque()

    def _busy_at(self, now: float) -> float:
        return self._busy + (now - self._busy_since if self._busy_since is not None else 0.0)

    def sent(self, tokens: int) -> None:
        """A batch of `tokens` real tokens went to a replica."""
        now = self._clock()
        if self._batches == 0:
            self._busy_since = now
            self._samples.append((now, self._done, self._busy))
        self._batches += 1
        self.tokens_at_replicas += tokens

    def ended(self, tokens: int, computed: bool = True) -> None:
        """A batch that `sent` reported is back (`computed` False: it failed, nothing got done)."""
        now = self._clock()
        self._batches -= 1
        self.tokens_at_replicas -= tokens
        if computed:
            self._done += tokens
        if self._batches == 0 and self._busy_since is not None:
            self._busy += now - self._busy_since
            self._busy_since = None
        self._samples.append((now, self._done, self._busy_at(now)))
        self._prune(now)

    def _prune(self, now: float) -> None:
        start = now - self._window_s
        while len(self._samples) > 1 and self._samples[1][0] <= start:
            self._samples.popleft()

    def rate(self) -> float | None:
        """Real tokens per busy second over the recent window; None before any computed batch."""
        now = self._clock()
        self._prune(now)
        if not self._samples:
            return None
        _, done, busy = self._samples[0]
        tokens = self._done - done
        seconds = self._busy_at(now) - busy
        if tokens <= 0 or seconds <= 0.0:
            return None
        return tokens / seconds
