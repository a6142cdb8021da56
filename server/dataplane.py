"""The data plane: validate → tokenize → batch → await → post-process, per task.

Transport-free: takes domain queries, returns domain answers, raises ServingError.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from bertserve.server.domain import (
    FillMaskAnswer,
    FillMaskQuery,
    NextSentenceAnswer,
    NextSentenceQuery,
    Timing,
)
from bertserve.server.models import ModelRegistry
from bertserve.server.scheduling.batcher import Batcher
from bertserve.server.scheduling.work import ItemResult, WorkItem
from bertserve.server.tasks import fill_mask, next_sentence
from bertserve.server.tokenization import Encoded


def _us(seconds: float) -> int:
    return int(seconds * 1e6)


class DataPlane:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    async def fill_mask(self, query: FillMaskQuery, deadline: float | None = None) -> FillMaskAnswer:
        start = time.perf_counter()
        model = self.registry.get(query.model)
        batcher = model.batcher(fill_mask.TASK)
        prepared = fill_mask.prepare(query, model.tokenizer, model.config.limits)
        tokenized = time.perf_counter()
        items = await _run(batcher, prepared.encoded, prepared.heads, deadline)
        results = tuple(
            fill_mask.finish(enc, head, item.output, model.tokenizer)
            for enc, head, item in zip(prepared.encoded, prepared.heads, items, strict=True)
        )
        return FillMaskAnswer(results, model.name, _timing(start, tokenized, items))

    async def next_sentence(
        self, query: NextSentenceQuery, deadline: float | None = None
    ) -> NextSentenceAnswer:
        start = time.perf_counter()
        model = self.registry.get(query.model)
        batcher = model.batcher(next_sentence.TASK)
        encoded = next_sentence.prepare(query, model.tokenizer, model.config.limits)
        tokenized = time.perf_counter()
        items = await _run(batcher, encoded, [None] * len(encoded), deadline)
        results = tuple(
            next_sentence.finish(enc, item.output) for enc, item in zip(encoded, items, strict=True)
        )
        return NextSentenceAnswer(results, model.name, _timing(start, tokenized, items))


async def _run(
    batcher: Batcher, encoded: Sequence[Encoded], heads: Sequence[Any], deadline: float | None
) -> list[ItemResult]:
    """Queue one work item per input and wait for all. On cancellation the items are
    abandoned: the batcher skips them if still queued and drops their results otherwise."""
    loop = asyncio.get_running_loop()
    items = [
        WorkItem(enc.ids, enc.type_ids, head, loop.create_future(), deadline)
        for enc, head in zip(encoded, heads, strict=True)
    ]
    batcher.submit(items)
    try:
        return list(await asyncio.gather(*(it.future for it in items)))
    except BaseException:
        for it in items:
            if it.future.done() and not it.future.cancelled():
                it.future.exception()  # retrieved: no "never retrieved" warning
            it.future.cancel()
        raise


def _timing(start: float, tokenized: float, items: Sequence[ItemResult]) -> Timing:
    return Timing(
        tokenization_us=_us(tokenized - start),
        queue_us=max(it.queue_us for it in items),
        inference_us=max(it.inference_us for it in items),
        total_us=_us(time.perf_counter() - start),
    )
