"""Embed: one vector per text from the encoder's last hidden state, [CLS] or masked-mean
pooling, optional L2 normalisation; long texts rejected, truncated, or split into windows
whose vectors are averaged."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bertserve.server import convert
from bertserve.server.domain import (
    EmbedAnswer,
    EmbeddingResult,
    EmbedQuery,
    InputStats,
    Pooling,
    RequestLimits,
    Timing,
)
from bertserve.server.tasks.common import Windowed, as_windows, check_count, check_text, encode_with_policy
from bertserve.server.tasks.definition import ModelInput, ModelView, Prepared, TaskDefinition
from bertserve.server.tokenization import TextTokenizer
from bertserve.v1 import embed_pb2
from bertserve.workers.protocol import EmbeddingOutput, FloatArray, Task

TASK = Task.EMBED
POOLINGS = {
    embed_pb2.POOLING_UNSPECIFIED: Pooling.MEAN,
    embed_pb2.POOLING_MEAN: Pooling.MEAN,
    embed_pb2.POOLING_CLS: Pooling.CLS,
}


def prepare(query: EmbedQuery, tokenizer: TextTokenizer, limits: RequestLimits) -> Windowed:
    check_count(len(query.texts), "texts", limits)
    for i, text in enumerate(query.texts):
        check_text(text, f"texts[{i}]", limits)
    return encode_with_policy(tokenizer, query.texts, "texts", limits, query.truncation)


def finish(
    window_vectors: Sequence[tuple[FloatArray, FloatArray]],
    stats: InputStats,
    pooling: Pooling,
    normalize: bool,
) -> EmbeddingResult:
    column = 0 if pooling is Pooling.CLS else 1
    vectors = [pair[column] for pair in window_vectors]
    vector = vectors[0] if len(vectors) == 1 else np.mean(np.stack(vectors), axis=0)
    vector = vector.astype(np.float32)
    if normalize:
        norm = float(np.linalg.norm(vector))
        if norm > 0:
            vector = vector / norm
    return EmbeddingResult(tuple(vector.tolist()), stats)


class Embed(TaskDefinition[EmbedQuery, InputStats, EmbeddingResult, EmbedAnswer]):
    task = TASK
    rpc = "Embed"
    result_type = embed_pb2.Embedding
    response_type = embed_pb2.EmbedResponse
    answer_type = EmbedAnswer

    def to_query(self, request: embed_pb2.EmbedRequest) -> EmbedQuery:
        return EmbedQuery(
            texts=tuple(request.texts),
            pooling=convert.enum_value(POOLINGS, request.pooling, "pooling"),
            normalize=request.normalize,
            model=request.model,
            truncation=convert.truncation(request.truncation),
        )

    def prepare(self, query: EmbedQuery, model: ModelView) -> Prepared[InputStats]:
        windowed = prepare(query, model.tokenizer, model.limits)
        return Prepared(windowed.stats, as_windows(windowed.windows))

    def take(self, output: EmbeddingOutput, row: int, item: ModelInput) -> tuple[FloatArray, FloatArray]:
        return output.cls[row], output.mean[row]

    def finish(
        self, query: EmbedQuery, plan: InputStats, outputs: Sequence[Any], model: ModelView
    ) -> EmbeddingResult:
        return finish(outputs, plan, query.pooling, query.normalize)

    def answer(
        self,
        query: EmbedQuery,
        prepared: Prepared[InputStats],
        results: tuple[EmbeddingResult, ...],
        model_name: str,
        timing: Timing,
    ) -> EmbedAnswer:
        dimensions = len(results[0].vector) if results else 0
        return EmbedAnswer(results, dimensions, model_name, timing)

    def result_message(self, result: EmbeddingResult) -> embed_pb2.Embedding:
        return embed_pb2.Embedding(values=result.vector, input=convert.stats(result.input))

    def to_response(self, answer: EmbedAnswer) -> embed_pb2.EmbedResponse:
        return embed_pb2.EmbedResponse(
            model=answer.model,
            timing=convert.timing(answer.timing),
            dimensions=answer.dimensions,
            embeddings=[self.result_message(r) for r in answer.results],
        )


DEFINITION = Embed()
