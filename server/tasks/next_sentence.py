"""NextSentence: BERT's next-sentence head over (A, B) pairs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bertserve.server import convert
from bertserve.server.domain import (
    InputStats,
    NextSentenceAnswer,
    NextSentenceQuery,
    NextSentenceResult,
    RequestLimits,
    Truncation,
)
from bertserve.server.tasks.common import as_windows, check_count, check_length, check_no_split, check_text
from bertserve.server.tasks.definition import ModelInput, ModelView, Prepared, TaskDefinition
from bertserve.server.tokenization import Encoded, TextTokenizer
from bertserve.v1 import next_sentence_pb2
from bertserve.workers.protocol import FloatArray, NextSentenceOutput, Task

TASK = Task.NEXT_SENTENCE


def prepare(query: NextSentenceQuery, tokenizer: TextTokenizer, limits: RequestLimits) -> list[Encoded]:
    check_count(len(query.pairs), "pairs", limits)
    check_no_split(query.truncation, "NextSentence")
    for i, (first, second) in enumerate(query.pairs):
        check_text(first, f"pairs[{i}].first", limits)
        check_text(second, f"pairs[{i}].second", limits)
    encoded = tokenizer.encode(query.pairs, truncate=query.truncation is Truncation.TRUNCATE)
    for i, enc in enumerate(encoded):
        check_length(enc, f"pairs[{i}]", limits, query.truncation)
    return encoded


def finish(encoded: Encoded, logits: FloatArray) -> NextSentenceResult:
    z = logits.astype(np.float64)
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    return NextSentenceResult(
        is_next_probability=float(probs[0]),
        logits=(float(logits[0]), float(logits[1])),
        input=InputStats(encoded.length, encoded.truncated),
    )


class NextSentence(TaskDefinition[NextSentenceQuery, Encoded, NextSentenceResult, NextSentenceAnswer]):
    task = TASK
    rpc = "NextSentence"
    result_type = next_sentence_pb2.NextSentenceResult
    response_type = next_sentence_pb2.NextSentenceResponse
    answer_type = NextSentenceAnswer

    def to_query(self, request: next_sentence_pb2.NextSentenceRequest) -> NextSentenceQuery:
        return NextSentenceQuery(
            pairs=tuple((p.first, p.second) for p in request.pairs),
            model=request.model,
            truncation=convert.truncation(request.truncation),
        )

    def prepare(self, query: NextSentenceQuery, model: ModelView) -> Prepared[Encoded]:
        encoded = prepare(query, model.tokenizer, model.limits)
        return Prepared(tuple(encoded), as_windows([(enc,) for enc in encoded]))

    def take(self, output: NextSentenceOutput, row: int, item: ModelInput) -> FloatArray:
        logits: FloatArray = output.logits[row]
        return logits

    def finish(
        self, query: NextSentenceQuery, plan: Encoded, outputs: Sequence[Any], model: ModelView
    ) -> NextSentenceResult:
        return finish(plan, outputs[0])

    def result_message(self, result: NextSentenceResult) -> next_sentence_pb2.NextSentenceResult:
        return next_sentence_pb2.NextSentenceResult(
            is_next_probability=result.is_next_probability,
            logits=list(result.logits),
            input=convert.stats(result.input),
        )


DEFINITION = NextSentence()
