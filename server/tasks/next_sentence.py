"""NextSentence: BERT's next-sentence head over (A, B) pairs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bertserve.server.domain import (
    InputStats,
    NextSentenceQuery,
    NextSentenceResult,
    RequestLimits,
    Truncation,
)
from bertserve.server.scheduling.work import WorkItem
from bertserve.server.tasks.common import check_count, check_length, check_no_split, check_text, pad_batch
from bertserve.server.tokenization import Encoded, TextTokenizer
from bertserve.workers.protocol import EncodedBatch, FloatArray, NextSentenceOutput, Task

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


class NextSentenceKernel:
    method = "next_sentence"

    def __init__(self, pad_id: int) -> None:
        self._pad_id = pad_id

    def collate(self, items: Sequence[WorkItem]) -> tuple[EncodedBatch]:
        return (pad_batch(items, self._pad_id),)

    def split(self, output: NextSentenceOutput, items: Sequence[WorkItem]) -> list[FloatArray]:
        return [output.logits[i] for i in range(len(items))]


def finish(encoded: Encoded, logits: FloatArray) -> NextSentenceResult:
    z = logits.astype(np.float64)
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    return NextSentenceResult(
        is_next_probability=float(probs[0]),
        logits=(float(logits[0]), float(logits[1])),
        input=InputStats(encoded.length, encoded.truncated),
    )
