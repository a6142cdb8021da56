"""The data plane: admit → validate → tokenize → batch → await → post-process, one path for every
task, driven by the task's definition (server/tasks/definition.py).

Transport-free: takes domain queries, returns domain answers, raises ServingError. Inputs
that run as several windows (long NER texts, QA contexts, split classification or
embedding inputs) become several work items; their outputs are regrouped per input.

Every request of a task that uses replicas holds a permit of its model's admission
(scheduling/admission.py) from before tokenization until it is answered; its queued tokens
are checked right before its inputs are queued. Tokenize needs no permit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from bertserve.server.domain import (
    AnswerQuestionAnswer,
    AnswerQuestionQuery,
    ClassifySequenceAnswer,
    ClassifySequenceQuery,
    ClassifyTokensAnswer,
    ClassifyTokensQuery,
    EmbedAnswer,
    EmbedQuery,
    FillMaskAnswer,
    FillMaskQuery,
    NextSentenceAnswer,
    NextSentenceQuery,
    Timing,
    TokenizeAnswer,
    TokenizeQuery,
)
from bertserve.server.models import ModelRegistry, ServedModel
from bertserve.server.scheduling.admission import Permit
from bertserve.server.scheduling.batcher import Batcher
from bertserve.server.scheduling.work import ItemResult, WorkItem
from bertserve.server.tasks import tokenize
from bertserve.server.tasks.definition import TaskDefinition, Window
from bertserve.server.tasks.registry import DEFINITIONS
from bertserve.workers.protocol import Task


class _Query(Protocol):
    @property
    def model(self) -> str: ...


Q = TypeVar("Q", bound=_Query)
P = TypeVar("P")
R = TypeVar("R")
A = TypeVar("A")


def _us(seconds: float) -> int:
    return int(seconds * 1e6)


class DataPlane:
    """One method per task RPC, named after the task (the servicer calls them by that name); all
    but tokenize run `answer` with the task's definition."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    async def answer(
        self, definition: TaskDefinition[Q, P, R, A], query: Q, deadline: float | None = None
    ) -> A:
        """Admit, prepare, run every model input through the model's batcher, finish each input."""
        start = time.perf_counter()
        model = self.registry.get(query.model, definition.task)
        batcher = model.batcher(definition.task)
        view = model.view
        with model.admission.try_acquire() as permit:
            prepared = definition.prepare(query, view)
            tokenized = time.perf_counter()
            outputs, items = await _run_windows(batcher, permit, prepared.windows, deadline)
        results = tuple(
            definition.finish(query, plan, out, view)
            for plan, out in zip(prepared.plans, outputs, strict=True)
        )
        return definition.answer(query, prepared, results, model.name, _timing(start, tokenized, items))

    async def fill_mask(self, query: FillMaskQuery, deadline: float | None = None) -> FillMaskAnswer:
        return await self.answer(DEFINITIONS[Task.FILL_MASK], query, deadline)

    async def next_sentence(
        self, query: NextSentenceQuery, deadline: float | None = None
    ) -> NextSentenceAnswer:
        return await self.answer(DEFINITIONS[Task.NEXT_SENTENCE], query, deadline)

    async def classify_sequence(
        self, query: ClassifySequenceQuery, deadline: float | None = None
    ) -> ClassifySequenceAnswer:
        return await self.answer(DEFINITIONS[Task.CLASSIFY_SEQUENCE], query, deadline)

    async def classify_tokens(
        self, query: ClassifyTokensQuery, deadline: float | None = None
    ) -> ClassifyTokensAnswer:
        return await self.answer(DEFINITIONS[Task.CLASSIFY_TOKENS], query, deadline)

    async def answer_question(
        self, query: AnswerQuestionQuery, deadline: float | None = None
    ) -> AnswerQuestionAnswer:
        return await self.answer(DEFINITIONS[Task.ANSWER_QUESTION], query, deadline)

    async def embed(self, query: EmbedQuery, deadline: float | None = None) -> EmbedAnswer:
        return await self.answer(DEFINITIONS[Task.EMBED], query, deadline)

    async def tokenize(self, query: TokenizeQuery, deadline: float | None = None) -> TokenizeAnswer:
        start = time.perf_counter()
        model: ServedModel = self.registry.get(query.model, Task.TOKENIZE)
        results = tokenize.tokenize(query, model.tokenizer, model.config.limits)
        elapsed = _us(time.perf_counter() - start)
        return TokenizeAnswer(
            tuple(results),
            model.name,
            model.config.limits.max_sequence_length,
            Timing(tokenization_us=elapsed, queue_us=0, inference_us=0, total_us=elapsed),
        )


async def _run_windows(
    batcher: Batcher, permit: Permit, per_input: Sequence[Sequence[Window]], deadline: float | None
) -> tuple[list[list[Any]], list[ItemResult]]:
    """Run every window of every input; return the outputs grouped per input."""
    flat = [w for windows in per_input for w in windows]
    items = await _run(batcher, permit, flat, deadline)
    grouped: list[list[Any]] = []
    at = 0
    for windows in per_input:
        grouped.append([it.output for it in items[at : at + len(windows)]])
        at += len(windows)
    return grouped, items


async def _run(
    batcher: Batcher, permit: Permit, inputs: Sequence[Window], deadline: float | None
) -> list[ItemResult]:
    """Queue one work item per input and wait for all. The permit's queued-token check and the
    queueing run with no await between them, so the check holds. On cancellation or failure the
    items are abandoned: taken out of the queue if still there, their results dropped otherwise."""
    loop = asyncio.get_running_loop()
    items = [WorkItem(w.ids, w.type_ids, w.args, loop.create_future(), deadline) for w in inputs]
    permit.admit_tokens(sum(it.length for it in items))
    batcher.submit(items)
    try:
        if len(items) == 1:  # the usual case: no gather (one loop turn less before the answer)
            return [await items[0].future]
        return list(await asyncio.gather(*(it.future for it in items)))
    except BaseException:
        batcher.withdraw(items)
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
