"""The data plane: admit → validate → tokenize → batch → await → post-process, per task.

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
from typing import Any, Protocol

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
from bertserve.server.tasks import (
    answer_question,
    classify_sequence,
    classify_tokens,
    embed,
    fill_mask,
    next_sentence,
    tokenize,
)
from bertserve.workers.protocol import Task


class ModelInput(Protocol):
    @property
    def ids(self) -> tuple[int, ...]: ...

    @property
    def type_ids(self) -> tuple[int, ...]: ...


def _us(seconds: float) -> int:
    return int(seconds * 1e6)


class DataPlane:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    async def fill_mask(self, query: FillMaskQuery, deadline: float | None = None) -> FillMaskAnswer:
        start = time.perf_counter()
        model = self.registry.get(query.model, Task.FILL_MASK)
        batcher = model.batcher(Task.FILL_MASK)
        with model.admission.try_acquire() as permit:
            prepared = fill_mask.prepare(query, model.tokenizer, model.config.limits)
            tokenized = time.perf_counter()
            items = await _run(batcher, permit, prepared.encoded, prepared.heads, deadline)
        results = tuple(
            fill_mask.finish(enc, head, item.output, model.tokenizer)
            for enc, head, item in zip(prepared.encoded, prepared.heads, items, strict=True)
        )
        targets = prepared.targets
        return FillMaskAnswer(
            results,
            model.name,
            _timing(start, tokenized, items),
            targets.replaced if targets else (),
            targets.ignored if targets else (),
        )

    async def next_sentence(
        self, query: NextSentenceQuery, deadline: float | None = None
    ) -> NextSentenceAnswer:
        start = time.perf_counter()
        model = self.registry.get(query.model, Task.NEXT_SENTENCE)
        batcher = model.batcher(Task.NEXT_SENTENCE)
        with model.admission.try_acquire() as permit:
            encoded = next_sentence.prepare(query, model.tokenizer, model.config.limits)
            tokenized = time.perf_counter()
            items = await _run(batcher, permit, encoded, [None] * len(encoded), deadline)
        results = tuple(
            next_sentence.finish(enc, item.output) for enc, item in zip(encoded, items, strict=True)
        )
        return NextSentenceAnswer(results, model.name, _timing(start, tokenized, items))

    async def classify_sequence(
        self, query: ClassifySequenceQuery, deadline: float | None = None
    ) -> ClassifySequenceAnswer:
        start = time.perf_counter()
        model = self.registry.get(query.model, Task.CLASSIFY_SEQUENCE)
        batcher = model.batcher(Task.CLASSIFY_SEQUENCE)
        with model.admission.try_acquire() as permit:
            prepared = classify_sequence.prepare(query, model.tokenizer, model.config.limits)
            tokenized = time.perf_counter()
            outputs, items = await _run_windows(batcher, permit, prepared.windows, deadline)
        cfg = model.config
        results = tuple(
            classify_sequence.finish(out, stats, query.function, cfg.labels, cfg.problem_type, query.top_k)
            for out, stats in zip(outputs, prepared.stats, strict=True)
        )
        return ClassifySequenceAnswer(results, model.name, _timing(start, tokenized, items))

    async def classify_tokens(
        self, query: ClassifyTokensQuery, deadline: float | None = None
    ) -> ClassifyTokensAnswer:
        start = time.perf_counter()
        model = self.registry.get(query.model, Task.CLASSIFY_TOKENS)
        batcher = model.batcher(Task.CLASSIFY_TOKENS)
        with model.admission.try_acquire() as permit:
            plans = classify_tokens.prepare(query, model.tokenizer, model.config.limits)
            tokenized = time.perf_counter()
            outputs, items = await _run_windows(batcher, permit, [p.windows for p in plans], deadline)
        results = tuple(
            classify_tokens.finish(plan, out, query, model.config.labels, model.tokenizer)
            for plan, out in zip(plans, outputs, strict=True)
        )
        return ClassifyTokensAnswer(results, model.name, _timing(start, tokenized, items))

    async def answer_question(
        self, query: AnswerQuestionQuery, deadline: float | None = None
    ) -> AnswerQuestionAnswer:
        start = time.perf_counter()
        model = self.registry.get(query.model, Task.ANSWER_QUESTION)
        batcher = model.batcher(Task.ANSWER_QUESTION)
        with model.admission.try_acquire() as permit:
            plans = answer_question.prepare(query, model.tokenizer, model.config.limits)
            tokenized = time.perf_counter()
            outputs, items = await _run_windows(batcher, permit, [p.windows for p in plans], deadline)
        results = tuple(
            answer_question.finish(plan, out, query) for plan, out in zip(plans, outputs, strict=True)
        )
        return AnswerQuestionAnswer(results, model.name, _timing(start, tokenized, items))

    async def embed(self, query: EmbedQuery, deadline: float | None = None) -> EmbedAnswer:
        start = time.perf_counter()
        model = self.registry.get(query.model, Task.EMBED)
        batcher = model.batcher(Task.EMBED)
        with model.admission.try_acquire() as permit:
            prepared = embed.prepare(query, model.tokenizer, model.config.limits)
            tokenized = time.perf_counter()
            outputs, items = await _run_windows(batcher, permit, prepared.windows, deadline)
        results = tuple(
            embed.finish(out, stats, query.pooling, query.normalize)
            for out, stats in zip(outputs, prepared.stats, strict=True)
        )
        dimensions = len(results[0].vector) if results else 0
        return EmbedAnswer(results, dimensions, model.name, _timing(start, tokenized, items))

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
    batcher: Batcher, permit: Permit, per_input: Sequence[Sequence[ModelInput]], deadline: float | None
) -> tuple[list[list[Any]], list[ItemResult]]:
    """Run every window of every input; return the outputs grouped per input."""
    flat = [w for windows in per_input for w in windows]
    items = await _run(batcher, permit, flat, [None] * len(flat), deadline)
    grouped: list[list[Any]] = []
    at = 0
    for windows in per_input:
        grouped.append([it.output for it in items[at : at + len(windows)]])
        at += len(windows)
    return grouped, items


async def _run(
    batcher: Batcher,
    permit: Permit,
    inputs: Sequence[ModelInput],
    heads: Sequence[Any],
    deadline: float | None,
) -> list[ItemResult]:
    """Queue one work item per input and wait for all. The permit's queued-token check and the
    queueing run with no await between them, so the check holds. On cancellation or failure the
    items are abandoned: taken out of the queue if still there, their results dropped otherwise."""
    loop = asyncio.get_running_loop()
    items = [
        WorkItem(tuple(enc.ids), tuple(enc.type_ids), head, loop.create_future(), deadline)
        for enc, head in zip(inputs, heads, strict=True)
    ]
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
