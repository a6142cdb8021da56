"""ClassifySequence: fine-tuned sequence classifiers, with the semantics of the Hugging Face
text-classification pipeline (all labels sorted, `function_to_apply`, text pairs), plus a
long-input policy: reject, truncate, or split into windows and average their scores."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bertserve.server.domain import (
    ClassifySequenceQuery,
    ClassifySequenceResult,
    InputStats,
    LabelScore,
    RequestLimits,
    ScoreFunction,
    Truncation,
)
from bertserve.server.errors import InvalidInput
from bertserve.server.tasks.common import RowKernel, Windowed, check_count, check_text, encode_with_policy
from bertserve.server.tokenization import TextTokenizer
from bertserve.workers.protocol import FloatArray, LogitsOutput, Task

TASK = Task.CLASSIFY_SEQUENCE


def prepare(query: ClassifySequenceQuery, tokenizer: TextTokenizer, limits: RequestLimits) -> Windowed:
    check_count(len(query.inputs), "inputs", limits)
    if query.top_k is not None and query.top_k < 1:
        raise InvalidInput(f"top_k must be at least 1, got {query.top_k}")
    for i, item in enumerate(query.inputs):
        check_text(item.text, f"inputs[{i}].text", limits)
        if item.pair is not None:
            check_text(item.pair, f"inputs[{i}].text_pair", limits)
            if query.truncation is Truncation.SPLIT:
                raise InvalidInput(
                    f"inputs[{i}] is a text pair: TRUNCATION_POLICY_SPLIT applies to single texts only"
                )
    texts: list[str | tuple[str, str]] = [
        it.text if it.pair is None else (it.text, it.pair) for it in query.inputs
    ]
    return encode_with_policy(tokenizer, texts, "inputs", limits, query.truncation)


def kernel(pad_id: int) -> RowKernel:
    def take(output: LogitsOutput, row: int, _item: object) -> FloatArray:
        logits: FloatArray = output.logits[row]
        return logits

    return RowKernel("classify_sequence", pad_id, take)


def default_function(problem_type: str, num_labels: int) -> ScoreFunction:
    """The pipeline's rule when the request does not choose a function."""
    if problem_type == "regression":
        return ScoreFunction.NONE
    if problem_type == "multi_label_classification" or num_labels == 1:
        return ScoreFunction.SIGMOID
    return ScoreFunction.SOFTMAX


def apply(function: ScoreFunction, logits: FloatArray) -> FloatArray:
    """Scores from one window's logits, in float32 like the pipeline."""
    z = logits.astype(np.float32)
    out: FloatArray
    if function is ScoreFunction.SIGMOID:
        out = np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float32)
    elif function is ScoreFunction.SOFTMAX:
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        out = np.asarray(e / e.sum(axis=-1, keepdims=True), dtype=np.float32)
    else:
        out = z
    return out


def finish(
    window_logits: Sequence[FloatArray],
    stats: InputStats,
    function: ScoreFunction,
    labels: Sequence[str],
    problem_type: str,
    top_k: int | None,
) -> ClassifySequenceResult:
    """Every label with its score, best first (ties keep label order), cut to top_k. Split
    inputs score the mean of their windows' scores."""
    if function is ScoreFunction.DEFAULT:
        function = default_function(problem_type, len(labels))
    per_window = [apply(function, z) for z in window_logits]
    scores: FloatArray = per_window[0] if len(per_window) == 1 else np.mean(np.stack(per_window), axis=0)
    ranked = sorted(
        (LabelScore(_label(labels, i), float(s), i) for i, s in enumerate(scores.tolist())),
        key=lambda ls: ls.score,
        reverse=True,
    )
    return ClassifySequenceResult(tuple(ranked[:top_k] if top_k is not None else ranked), stats)


def _label(labels: Sequence[str], i: int) -> str:
    return labels[i] if i < len(labels) else f"LABEL_{i}"
