"""How long a batch will compute: a line fitted to recent batches, time = fixed + per token x tokens.

On a CPU a batch's time is nearly linear in its padded tokens with a large fixed part (bert-base,
1 thread, on the development machine: 16 tokens 61 ms, 64 tokens 111 ms, 256 tokens 345 ms, 512
tokens 704 ms, i.e. about 40 ms + 1.3 ms per token), so time per token alone overestimates large
batches and underestimates small ones. The fit weighs recent batches more (each older batch
counts `decay` times less), so it follows a replica that speeds up or slows down.
"""

from __future__ import annotations


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
