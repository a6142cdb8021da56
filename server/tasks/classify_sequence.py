"""ClassifySequence: fine-tuned sequence classifiers, with the semantics of the Hugging Face
text-classification pipeline (all labels sorted, `function_to_apply`, text pairs), plus a
long-input policy: reject, truncate, or split into windows and average their scores."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bertserve.server import convert
from bertserve.server.domain import (
    ClassifySequenceAnswer,
    ClassifySequenceQuery,
    ClassifySequenceResult,
    InputStats,
    LabelScore,
    RequestLimits,
    ScoreFunction,
    SequenceInput,
    Truncation,
)
from bertserve.server.errors import InvalidInput
from bertserve.server.tasks.common import Windowed, as_windows, check_count, check_text, encode_with_policy
from bertserve.server.tasks.definition import ModelInput, ModelView, Prepared, TaskDefinition
from bertserve.server.tokenization import TextTokenizer
from bertserve.v1 import classify_sequence_pb2
from bertserve.workers.protocol import FloatArray, LogitsOutput, Task

TASK = Task.CLASSIFY_SEQUENCE
SCORE_FUNCTIONS = {
    classify_sequence_pb2.SCORE_FUNCTION_UNSPECIFIED: ScoreFunction.DEFAULT,
    classify_sequence_pb2.SCORE_FUNCTION_SOFTMAX: ScoreFunction.SOFTMAX,
    classify_sequence_pb2.SCORE_FUNCTION_SIGMOID: ScoreFunction.SIGMOID,
    classify_sequence_pb2.SCORE_FUNCTION_NONE: ScoreFunction.NONE,
}


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


class ClassifySequence(
    TaskDefinition[ClassifySequenceQuery, InputStats, ClassifySequenceResult, ClassifySequenceAnswer]
):
    task = TASK
    rpc = "ClassifySequence"
    result_type = classify_sequence_pb2.ClassifySequenceResult
    response_type = classify_sequence_pb2.ClassifySequenceResponse
    answer_type = ClassifySequenceAnswer

    def to_query(self, request: classify_sequence_pb2.ClassifySequenceRequest) -> ClassifySequenceQuery:
        return ClassifySequenceQuery(
            inputs=tuple(
                SequenceInput(i.text, i.text_pair if i.HasField("text_pair") else None)
                for i in request.inputs
            ),
            top_k=request.top_k if request.HasField("top_k") else None,
            function=convert.enum_value(SCORE_FUNCTIONS, request.function_to_apply, "score function"),
            model=request.model,
            truncation=convert.truncation(request.truncation),
        )

    def prepare(self, query: ClassifySequenceQuery, model: ModelView) -> Prepared[InputStats]:
        windowed = prepare(query, model.tokenizer, model.limits)
        return Prepared(windowed.stats, as_windows(windowed.windows))

    def take(self, output: LogitsOutput, row: int, item: ModelInput) -> FloatArray:
        logits: FloatArray = output.logits[row]
        return logits

    def finish(
        self, query: ClassifySequenceQuery, plan: InputStats, outputs: Sequence[Any], model: ModelView
    ) -> ClassifySequenceResult:
        return finish(outputs, plan, query.function, model.labels, model.problem_type, query.top_k)

    def result_message(self, result: ClassifySequenceResult) -> classify_sequence_pb2.ClassifySequenceResult:
        return classify_sequence_pb2.ClassifySequenceResult(
            labels=[
                classify_sequence_pb2.LabelScore(label=ls.label, score=ls.score, label_id=ls.label_id)
                for ls in result.labels
            ],
            input=convert.stats(result.input),
        )


DEFINITION = ClassifySequence()
