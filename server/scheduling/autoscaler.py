"""Autoscaling policy: how many replicas a model wants, from its queue and its idle time.

Pure and clock-driven (the caller passes `now`), so it is tested without Ray or sleeps;
models.py runs it on a timer and applies its answers with `ReplicaPool.scale_to`.

- Up: the queued tokens per ready replica stay above `target_queued_tokens` for `up_window_s`,
  no replica is still starting or pending, and `up_cooldown_s` passed since the last scaling.
  The new count covers the whole queue at the target (at least one more), up to `max_replicas`.
- Down: the model stays idle (nothing queued and a replica without work) for `down_idle_s`,
  and `down_cooldown_s` passed since the last scaling: one replica fewer, down to `min_replicas`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class AutoscaleLimits:
    """Off unless max_replicas > 0. Times in seconds."""

    min_replicas: int = 0
    max_replicas: int = 0
    target_queued_tokens: int = 4096
    up_window_s: float = 2.0
    down_idle_s: float = 60.0
    up_cooldown_s: float = 5.0
    down_cooldown_s: float = 30.0

    @property
    def enabled(self) -> bool:
        return self.max_replicas > 0

    @property
    def floor(self) -> int:
        return max(1, self.min_replicas)

    def clamp(self, replicas: int) -> int:
        return min(self.max_replicas, max(self.floor, replicas)) if self.enabled else replicas


class AutoscalePolicy:
    def __init__(self, limits: AutoscaleLimits, now: float) -> None:
        self.limits = limits
        self._above_since: float | None = None
        self._idle_since: float | None = None
        self._last_scaled = now

    def note_scaled(self, now: float) -> None:
        """Scaling happened (here or by an operator): restart the cooldowns and windows."""
        self._last_scaled = now
        self._above_since = None
        self._idle_since = None

    def decide(self, now: float, *, current: int, ready: int, queued_tokens: int, idle: bool) -> int | None:
        """The replica count wanted now, or None to stay. `current` counts replicas not being
        removed (starting and pending included), `ready` those taking traffic."""
        lim = self.limits
        if not lim.enabled:
            return None
        if current < lim.floor or current > lim.max_replicas:
            return self._scaled(now, lim.clamp(current))
        busy = queued_tokens / max(1, ready) > lim.target_queued_tokens
        self._above_since = (self._above_since if self._above_since is not None else now) if busy else None
        self._idle_since = (self._idle_since if self._idle_since is not None else now) if idle else None
        since = now - self._last_scaled
        if (
            self._above_since is not None
            and now - self._above_since >= lim.up_window_s
            and since >= lim.up_cooldown_s
            and current < lim.max_replicas
            and ready >= current  # none still warming up or waiting for resources
        ):
            wanted = max(current + 1, math.ceil(queued_tokens / lim.target_queued_tokens))
            return self._scaled(now, min(lim.max_replicas, wanted))
        if (
            self._idle_since is not None
            and now - self._idle_since >= lim.down_idle_s
            and since >= lim.down_cooldown_s
            and current > lim.floor
        ):
            return self._scaled(now, current - 1)
        return None

    def _scaled(self, now: float, replicas: int) -> int:
        self.note_scaled(now)
        return replicas
