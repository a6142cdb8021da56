"""ClassifyTokens: NER with the semantics of the Hugging Face token-classification pipeline
(aggregation none/simple/first/average/max, ignore_labels, character offsets). Texts longer
than the model's window run over overlapping windows; server/tasks/ner.py plans the windows
and merges their predictions back into the text."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bertserve.server.domain import (
    ClassifyTokensQuery,
    ClassifyTokensResult,
    EntityResult,
    InputStats,
    RequestLimits,
)
from bertserve.server.errors import InvalidInput
from bertserve.server.tasks import ner
from bertserve.server.tasks.common import RowKernel, check_count, check_text
from bertserve.server.tokenization import TextTokenizer
from bertserve.workers.protocol import FloatArray, Task, TokenLogitsOutput

TASK = Task.CLASSIFY_TOKENS
DEFAULT_IGNORE = ("O",)


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


def kernel(pad_id: int) -> RowKernel:
    def take(output: TokenLogitsOutput, row: int, item: object) -> FloatArray:
        length = len(item.ids)  # type: ignore[attr-defined]
        return output.logits[row, :length]

    return RowKernel("classify_tokens", pad_id, take)


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
