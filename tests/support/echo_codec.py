"""A batch codec for scheduling tests with fake replicas: the batch is the list of the items'
token ids, and each item's output is its own ids back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bertserve.server.scheduling.work import WorkItem


class EchoCodec:
    method = "echo"

    def collate(self, items: Sequence[WorkItem]) -> tuple[Any, ...]:
        return ([it.ids for it in items],)

    def split(self, output: Any, items: Sequence[WorkItem]) -> list[Any]:
        return list(output)
