"""Units of work that flow through the batcher, and the task steps it runs around a replica call."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class ItemResult:
    """What one input got back: the task's per-item output and where its time went."""

    output: Any
    queue_us: int
    inference_us: int
    replica_id: str


@dataclass(eq=False)
class WorkItem:
    """One model input (a text, a pair, or a window of a long input) waiting for a batch, with the
    future its caller awaits. A server/tasks/definition.ModelInput.

    args: per-input arguments of the task's compute method (fill-mask: its masks); None for most.
    deadline: monotonic time after which the result is useless (None: no deadline).
    enqueued_at: when it was queued, on the batcher's clock (set by Batcher.submit).
    """

    ids: tuple[int, ...]
    type_ids: tuple[int, ...]
    args: Any
    future: asyncio.Future[ItemResult]
    deadline: float | None = None
    enqueued_at: float = 0.0

    @property
    def length(self) -> int:
        return len(self.ids)

    @property
    def abandoned(self) -> bool:
        """The caller stopped waiting (cancelled or already failed)."""
        return self.future.done()


class BatchCodec(Protocol):
    """A task's batch-level steps for the batcher (server/tasks/definition.Codec): `collate` makes
    the arguments of the replica's compute method `method` from a batch's items, `split` cuts
    its output into one output per item."""

    method: str

    def collate(self, items: Sequence[WorkItem]) -> tuple[Any, ...]: ...

    def split(self, output: Any, items: Sequence[WorkItem]) -> list[Any]: ...
