"""Embed: one vector per text from the encoder's last hidden state, [CLS] or masked-mean
pooling, optional L2 normalisation; long texts rejected, truncated, or split into windows
whose vectors are averaged."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bertserve.server.domain import (
    EmbeddingResult,
    EmbedQuery,
    InputStats,
    Pooling,
    RequestLimits,
)
from bertserve.server.tasks.common import RowKernel, Windowed, check_count, check_text, encode_with_policy
from bertserve.server.tokenization import TextTokenizer
from bertserve.workers.protocol import EmbeddingOutput, FloatArray, Task

TASK = Task.EMBED


def prepare(query: EmbedQuery, tokenizer: TextTokenizer, limits: RequestLimits) -> Windowed:
    check_count(len(query.texts), "texts", limits)
    for i, text in enumerate(query.texts):
        check_text(text, f"texts[{i}]", limits)
    return encode_with_policy(tokenizer, query.texts, "texts", limits, query.truncation)


def kernel(pad_id: int) -> RowKernel:
    def take(output: EmbeddingOutput, row: int, _item: object) -> tuple[FloatArray, FloatArray]:
        return output.cls[row], output.mean[row]

    return RowKernel("embed", pad_id, take)


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
