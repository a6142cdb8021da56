"""AnswerQuestion: extractive QA with the semantics of the Hugging Face question-answering
pipeline of transformers 4.57.6 (doc_stride windows over long contexts, top_k, max_answer_len,
handle_impossible_answer), except that a question longer than max_question_len tokens is
rejected; server/tasks/answer_question_windows.py plans the windows and decodes the spans."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bertserve.server import convert
from bertserve.server.domain import (
    AnswerQuestionAnswer,
    AnswerQuestionQuery,
    AnswerQuestionResult,
    AnswerSpan,
    InputStats,
    RequestLimits,
)
from bertserve.server.errors import InvalidInput
from bertserve.server.tasks import answer_question_windows as qa
from bertserve.server.tasks.common import as_windows, check_count, check_text, check_windows
from bertserve.server.tasks.definition import ModelInput, ModelView, Prepared, TaskDefinition
from bertserve.server.tokenization import TextTokenizer
from bertserve.v1 import answer_question_pb2
from bertserve.workers.protocol import FloatArray, SpanLogitsOutput, Task

TASK = Task.ANSWER_QUESTION


def prepare(query: AnswerQuestionQuery, tokenizer: TextTokenizer, limits: RequestLimits) -> list[qa.QAPlan]:
    check_count(len(query.inputs), "inputs", limits)
    if not 1 <= query.top_k <= limits.max_top_k:
        raise InvalidInput(f"top_k must be between 1 and {limits.max_top_k}, got {query.top_k}")
    if not 1 <= query.max_answer_len <= limits.max_sequence_length:
        raise InvalidInput(
            f"max_answer_len must be between 1 and {limits.max_sequence_length}, got {query.max_answer_len}"
        )
    if query.max_question_len < 1:
        raise InvalidInput(f"max_question_len must be at least 1, got {query.max_question_len}")
    if query.doc_stride is not None and query.doc_stride < 0:
        raise InvalidInput(f"doc_stride must not be negative, got {query.doc_stride}")
    plans = []
    for i, (question, context) in enumerate(query.inputs):
        check_text(question, f"inputs[{i}].question", limits)
        check_text(context, f"inputs[{i}].context", limits)
        try:
            plans.append(
                qa.plan(
                    question,
                    context,
                    tokenizer.backend,
                    # The pipeline's window: the model's maximum length, at most 384 tokens.
                    qa.default_max_length(limits.max_sequence_length),
                    doc_stride=query.doc_stride,
                    max_question_len=query.max_question_len,
                )
            )
        except qa.QuestionTooLong as exc:
            # Rejected rather than cut: a shortened question is another question.
            raise InvalidInput(
                f"inputs[{i}].question is {exc.tokens} tokens long; max_question_len is {exc.limit}"
            ) from None
        except ValueError as exc:
            raise InvalidInput(f"inputs[{i}]: {exc}") from None
        check_windows(len(plans[-1].windows), f"inputs[{i}].context", "use a smaller doc_stride")
    return plans


def finish(
    plan: qa.QAPlan, window_logits: Sequence[tuple[FloatArray, FloatArray]], query: AnswerQuestionQuery
) -> AnswerQuestionResult:
    answers = qa.decode(
        plan,
        [start for start, _ in window_logits],
        [end for _, end in window_logits],
        top_k=query.top_k,
        max_answer_len=query.max_answer_len,
        handle_impossible_answer=query.handle_impossible_answer,
    )
    tokens = sum(len(w.ids) for w in plan.windows)
    return AnswerQuestionResult(
        tuple(AnswerSpan(a.text, float(a.score), a.start, a.end) for a in answers),
        InputStats(tokens, False, len(plan.windows)),
    )


class AnswerQuestion(
    TaskDefinition[AnswerQuestionQuery, qa.QAPlan, AnswerQuestionResult, AnswerQuestionAnswer]
):
    task = TASK
    rpc = "AnswerQuestion"
    result_type = answer_question_pb2.AnswerQuestionResult
    response_type = answer_question_pb2.AnswerQuestionResponse
    answer_type = AnswerQuestionAnswer

    def to_query(self, request: answer_question_pb2.AnswerQuestionRequest) -> AnswerQuestionQuery:
        return AnswerQuestionQuery(
            inputs=tuple((i.question, i.context) for i in request.inputs),
            top_k=convert.optional_int(request, "top_k", 1),
            max_answer_len=convert.optional_int(request, "max_answer_len", 15),
            doc_stride=request.doc_stride if request.HasField("doc_stride") else None,
            handle_impossible_answer=request.handle_impossible_answer,
            max_question_len=convert.optional_int(request, "max_question_len", 64),
            model=request.model,
        )

    def prepare(self, query: AnswerQuestionQuery, model: ModelView) -> Prepared[qa.QAPlan]:
        plans = prepare(query, model.tokenizer, model.limits)
        return Prepared(tuple(plans), as_windows([p.windows for p in plans]))

    def take(self, output: SpanLogitsOutput, row: int, item: ModelInput) -> tuple[FloatArray, FloatArray]:
        length = len(item.ids)
        return output.start_logits[row, :length], output.end_logits[row, :length]

    def finish(
        self, query: AnswerQuestionQuery, plan: qa.QAPlan, outputs: Sequence[Any], model: ModelView
    ) -> AnswerQuestionResult:
        return finish(plan, outputs, query)

    def result_message(self, result: AnswerQuestionResult) -> answer_question_pb2.AnswerQuestionResult:
        return answer_question_pb2.AnswerQuestionResult(
            answers=[
                answer_question_pb2.Answer(text=a.text, score=a.score, start=a.start, end=a.end)
                for a in result.answers
            ],
            input=convert.stats(result.input),
        )


DEFINITION = AnswerQuestion()
