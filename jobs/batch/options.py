"""The tasks, input columns and task options of `bertserve batch` (no heavy imports: the CLI
declares its flags from these)."""

from __future__ import annotations

from dataclasses import dataclass

from bertserve.workers.protocol import Task

TASKS: dict[str, Task] = {
    "fill-mask": Task.FILL_MASK,
    "next-sentence": Task.NEXT_SENTENCE,
    "classify-sequence": Task.CLASSIFY_SEQUENCE,
    "classify-tokens": Task.CLASSIFY_TOKENS,
    "answer-question": Task.ANSWER_QUESTION,
    "embed": Task.EMBED,
}
"""The TASK argument of `bertserve batch`, and the task each name runs."""


@dataclass(frozen=True)
class Columns:
    """Input columns by role (--text-column, --pair-column, --question-column, --context-column)."""

    text: str = "text"
    pair: str = "text_pair"
    question: str = "question"
    context: str = "context"


@dataclass(frozen=True)
class Options:
    """Task options, named as the Python client's arguments; None leaves a field unset (the
    server's default)."""

    top_k: int | None = None
    targets: tuple[str, ...] | None = None
    truncation: str | None = None
    function_to_apply: str | None = None
    aggregation: str | None = None
    ignore_labels: tuple[str, ...] | None = None
    max_answer_len: int | None = None
    doc_stride: int | None = None
    max_question_len: int | None = None
    handle_impossible_answer: bool | None = None
    pooling: str | None = None
    normalize: bool | None = None


OPTION_TASKS: dict[str, tuple[Task, ...]] = {
    "top_k": (Task.FILL_MASK, Task.CLASSIFY_SEQUENCE, Task.ANSWER_QUESTION),
    "targets": (Task.FILL_MASK,),
    "truncation": (Task.FILL_MASK, Task.NEXT_SENTENCE, Task.CLASSIFY_SEQUENCE, Task.EMBED),
    "function_to_apply": (Task.CLASSIFY_SEQUENCE,),
    "aggregation": (Task.CLASSIFY_TOKENS,),
    "ignore_labels": (Task.CLASSIFY_TOKENS,),
    "max_answer_len": (Task.ANSWER_QUESTION,),
    "doc_stride": (Task.ANSWER_QUESTION,),
    "max_question_len": (Task.ANSWER_QUESTION,),
    "handle_impossible_answer": (Task.ANSWER_QUESTION,),
    "pooling": (Task.EMBED,),
    "normalize": (Task.EMBED,),
}
"""The tasks each option applies to."""
