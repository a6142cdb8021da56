"""Units of work that flow through the batcher."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ItemResult:
    """What one input got back: the task's per-item output and where its time went."""

    output: Any
    queue_us: int
    inference_us: int
    replica_id: str


@dataclass(eq=False)
class WorkItem:
    """One model input (a text or a pair) waiting for a batch.

    head: task-specific arguments (e.g. mask positions and targets for fill-mask).
    deadline: monotonic time after which the result is useless (None: no deadline).
    """

    ids: tuple[int, ...]
    type_ids: tuple[int, ...]
    head: Any
    future: asyncio.Future[ItemResult]
    deadline: float | None = None
    enqueued_at: float = field(default_factory=time.monotonic)

    @property
    def length(self) -> int:
        return len(self.ids)

    @property
    def abandoned(self) -> bool:
        """The caller stopped waiting (cancelled or already failed)."""
        return self.future.done()
