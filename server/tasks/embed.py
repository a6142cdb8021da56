"""Embed: one vector per text from the encoder's last hidden state, [CLS] or masked-mean
pooling, optional L2 normalisation; long texts rejected, truncated, or split into windows
whose vectors are averaged."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bertserve.server.domain import (
    EmbeddingResult,
    EmbedQuery,
    InputStats,
    Pooling,
    RequestLimits,
    Truncation,
)
from bertserve.server.tasks.common import RowKernel, check_count, check_length, check_text, split_windows
from bertserve.server.tokenization import Encoded, TextTokenizer
from bertserve.workers.protocol import EmbeddingOutput, FloatArray, Task

TASK = Task.EMBED


@dataclass(frozen=True)
class Prepared:
    windows: tuple[tuple[Encoded, ...], ...]
    stats: tuple[InputStats, ...]


def prepare(query: EmbedQuery, tokenizer: TextTokenizer, limits: RequestLimits) -> Prepared:
    check_count(len(query.texts), "texts", limits)
    for i, text in enumerate(query.texts):
        check_text(text, f"texts[{i}]", limits)
    encoded = tokenizer.encode(query.texts, truncate=query.truncation is Truncation.TRUNCATE)
    windows: list[tuple[Encoded, ...]] = []
    stats: list[InputStats] = []
    for i, enc in enumerate(encoded):
        if query.truncation is Truncation.SPLIT:
            parts = split_windows(enc, limits.max_sequence_length)
        else:
            check_length(enc, f"texts[{i}]", limits, query.truncation, can_split=True)
            parts = [enc]
        windows.append(tuple(parts))
        stats.append(InputStats(sum(w.length for w in parts), enc.truncated, len(parts)))
    return Prepared(tuple(windows), tuple(stats))


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
