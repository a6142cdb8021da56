"""ClassifyTokens: NER with the semantics of the Hugging Face token-classification pipeline
(aggregation none/simple/first/average/max, ignore_labels, character offsets). Texts longer
than the model's window run over overlapping windows; server/tasks/classify_tokens_windows.py plans
the windows and merges their predictions back into the text."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bertserve.server import convert
from bertserve.server.domain import (
    ClassifyTokensAnswer,
    ClassifyTokensQuery,
    ClassifyTokensResult,
    EntityResult,
    InputStats,
    RequestLimits,
)
from bertserve.server.errors import InvalidInput
from bertserve.server.tasks import classify_tokens_windows as ner
from bertserve.server.tasks.common import as_windows, check_count, check_text
from bertserve.server.tasks.definition import ModelInput, ModelView, Prepared, TaskDefinition
from bertserve.server.tokenization import TextTokenizer
from bertserve.v1 import classify_tokens_pb2
from bertserve.workers.protocol import FloatArray, Task, TokenLogitsOutput

TASK = Task.CLASSIFY_TOKENS
DEFAULT_IGNORE = ("O",)
AGGREGATIONS = {
    classify_tokens_pb2.AGGREGATION_STRATEGY_UNSPECIFIED: "none",
    classify_tokens_pb2.AGGREGATION_STRATEGY_NONE: "none",
    classify_tokens_pb2.AGGREGATION_STRATEGY_SIMPLE: "simple",
    classify_tokens_pb2.AGGREGATION_STRATEGY_FIRST: "first",
    classify_tokens_pb2.AGGREGATION_STRATEGY_AVERAGE: "average",
    classify_tokens_pb2.AGGREGATION_STRATEGY_MAX: "max",
}


def prepare(query: ClassifyTokensQuery, tokenizer: TextTokenizer, limits: RequestLimits) -> list[ner.NerPlan]:
    check_count(len(query.texts), "texts", limits)
    if query.aggregation not in ner.AGGREGATIONS:
        choices = ", ".join(ner.AGGREGATIONS)
        raise InvalidInput(
            f"unknown aggregation strategy {query.aggregation[:40]!r}; choose one of {choices}"
        )
    for i, text in enumerate(query.texts):
        check_text(text, f"texts[{i}]", limits)
    return [ner.plan(text, tokenizer.backend, limits.max_sequence_length) for text in query.texts]


def finish(
    plan: ner.NerPlan,
    window_logits: Sequence[FloatArray],
    query: ClassifyTokensQuery,
    labels: Sequence[str],
    tokenizer: TextTokenizer,
) -> ClassifyTokensResult:
    id2label: Mapping[int, str] = {i: name for i, name in enumerate(labels)}
    if len(id2label) < window_logits[0].shape[-1]:
        id2label = {i: id2label.get(i, f"LABEL_{i}") for i in range(window_logits[0].shape[-1])}
    ignore = DEFAULT_IGNORE if query.ignore_labels is None else query.ignore_labels
    entities = ner.decode(plan, window_logits, id2label, query.aggregation, ignore, tokenizer.backend)
    return ClassifyTokensResult(
        tuple(
            EntityResult(
                e.label,
                float(e.score),
                e.word,
                e.start,
                e.end,
                e.index if query.aggregation == "none" else None,
            )
            for e in entities
        ),
        InputStats(sum(len(w.ids) for w in plan.windows), False, len(plan.windows)),
    )


class ClassifyTokens(
    TaskDefinition[ClassifyTokensQuery, ner.NerPlan, ClassifyTokensResult, ClassifyTokensAnswer]
):
    task = TASK
    rpc = "ClassifyTokens"
    result_type = classify_tokens_pb2.ClassifyTokensResult
    response_type = classify_tokens_pb2.ClassifyTokensResponse
    answer_type = ClassifyTokensAnswer

    def to_query(self, request: classify_tokens_pb2.ClassifyTokensRequest) -> ClassifyTokensQuery:
        return ClassifyTokensQuery(
            texts=tuple(request.texts),
            aggregation=convert.enum_value(AGGREGATIONS, request.aggregation, "aggregation strategy"),
            ignore_labels=tuple(request.ignore_labels.labels) if request.HasField("ignore_labels") else None,
            model=request.model,
        )

    def prepare(self, query: ClassifyTokensQuery, model: ModelView) -> Prepared[ner.NerPlan]:
        plans = prepare(query, model.tokenizer, model.limits)
        return Prepared(tuple(plans), as_windows([p.windows for p in plans]))

    def take(self, output: TokenLogitsOutput, row: int, item: ModelInput) -> FloatArray:
        return output.logits[row, : len(item.ids)]

    def finish(
        self, query: ClassifyTokensQuery, plan: ner.NerPlan, outputs: Sequence[Any], model: ModelView
    ) -> ClassifyTokensResult:
        return finish(plan, outputs, query, model.labels, model.tokenizer)

    def result_message(self, result: ClassifyTokensResult) -> classify_tokens_pb2.ClassifyTokensResult:
        return classify_tokens_pb2.ClassifyTokensResult(
            entities=[
                classify_tokens_pb2.Entity(
                    label=e.label, score=e.score, word=e.word, start=e.start, end=e.end, index=e.index
                )
                for e in result.entities
            ],
            input=convert.stats(result.input),
        )


DEFINITION = ClassifyTokens()
