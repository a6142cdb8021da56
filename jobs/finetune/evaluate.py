"""The task metric from the Trainer's evaluation outputs (`compute_metrics` functions).

Question answering decodes the windows' logits with the server's own post-processing
(`bertserve.server.tasks.answer_question_windows.decode`, with AnswerQuestion's default
arguments), so the exact match and F1 reported are those of the answers a caller of the served
model gets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bertserve.jobs import scores
from bertserve.jobs.finetune.features import IGNORE, QAEvalSet
from bertserve.server.domain import AnswerQuestionQuery
from bertserve.server.tasks import answer_question_windows as qa

Metrics = dict[str, float]
ComputeMetrics = Callable[[Any], Metrics]


def _logits(predictions: Any) -> np.ndarray[Any, Any]:
    return np.asarray(predictions[0] if isinstance(predictions, tuple) else predictions)


def classification(prediction: Any) -> Metrics:
    predicted = _logits(prediction.predictions).argmax(-1).tolist()
    references = np.asarray(prediction.label_ids).tolist()
    return {
        "accuracy": scores.accuracy(predicted, references),
        "macro_f1": scores.macro_f1(predicted, references),
    }


def token_classification(label_names: Sequence[str]) -> ComputeMetrics:
    def compute(prediction: Any) -> Metrics:
        predicted = _logits(prediction.predictions).argmax(-1)
        references = np.asarray(prediction.label_ids)
        pred_tags, ref_tags = tag_sequences(predicted, references, label_names)
        return scores.entity_scores(pred_tags, ref_tags)

    return compute


def tag_sequences(
    predicted: np.ndarray[Any, Any], references: np.ndarray[Any, Any], label_names: Sequence[str]
) -> tuple[list[list[str]], list[list[str]]]:
    """Per sentence, the predicted and gold tags at the labelled positions (each word's first piece)."""
    pred_out, ref_out = [], []
    for pred_row, ref_row in zip(predicted, references, strict=True):
        keep = ref_row != IGNORE
        pred_out.append([label_names[int(i)] for i in pred_row[keep]])
        ref_out.append([label_names[int(i)] for i in ref_row[keep]])
    return pred_out, ref_out


def question_answering(eval_set: QAEvalSet) -> ComputeMetrics:
    defaults = AnswerQuestionQuery(inputs=())

    def compute(prediction: Any) -> Metrics:
        start_logits, end_logits = (np.asarray(a) for a in prediction.predictions[:2])
        answers = qa_answers(eval_set, start_logits, end_logits, defaults)
        return scores.squad_scores(answers, eval_set.golds)

    return compute


def qa_answers(
    eval_set: QAEvalSet,
    start_logits: np.ndarray[Any, Any],
    end_logits: np.ndarray[Any, Any],
    query: AnswerQuestionQuery,
) -> list[str]:
    """The best answer's text for each question ("" where the server would reject the question)."""
    answers: list[str] = []
    row = 0
    for plan, count in zip(eval_set.plans, eval_set.window_counts, strict=True):
        if plan is None:
            answers.append("")
            continue
        starts = [start_logits[row + i, : w.length] for i, w in enumerate(plan.windows)]
        ends = [end_logits[row + i, : w.length] for i, w in enumerate(plan.windows)]
        row += count
        best = qa.decode(
            plan,
            starts,
            ends,
            top_k=query.top_k,
            max_answer_len=query.max_answer_len,
            handle_impossible_answer=query.handle_impossible_answer,
        )
        answers.append(best[0].text if best else "")
    return answers
