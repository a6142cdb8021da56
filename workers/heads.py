"""Which tasks a checkpoint can serve, from its architecture (config.json, no torch).

Shared by the front end (to check a configuration before any replica starts) and by the
replicas (to load the right head and check its weights are really there).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bertserve.workers.protocol import Task

TASK_NAMES: dict[Task, str] = {
    Task.FILL_MASK: "FillMask",
    Task.NEXT_SENTENCE: "NextSentence",
    Task.CLASSIFY_SEQUENCE: "ClassifySequence",
    Task.CLASSIFY_TOKENS: "ClassifyTokens",
    Task.ANSWER_QUESTION: "AnswerQuestion",
    Task.EMBED: "Embed",
    Task.TOKENIZE: "Tokenize",
}
# Served by every checkpoint: the encoder and the tokenizer are always there.
ALWAYS = (Task.EMBED, Task.TOKENIZE)


@dataclass(frozen=True)
class Head:
    """How replicas load an architecture and what it serves.

    load_class: the transformers class replicas instantiate.
    tasks: tasks the head serves when its weights are present (plus ALWAYS).
    head_prefixes: per task, parameter-name prefixes that must not be missing after loading.
    """

    load_class: str
    tasks: tuple[Task, ...]
    head_prefixes: Mapping[Task, tuple[str, ...]]
    description: str


# Pre-training-family checkpoints load as BertForPreTraining: bert-base-cased's config says
# BertForMaskedLM but its weights also hold the next-sentence head, which NextSentence needs.
_PRETRAINING = Head(
    "BertForPreTraining",
    (Task.FILL_MASK, Task.NEXT_SENTENCE),
    {Task.FILL_MASK: ("cls.predictions",), Task.NEXT_SENTENCE: ("cls.seq_relationship", "bert.pooler")},
    "pre-training heads (masked LM and next sentence)",
)
HEADS: dict[str, Head] = {
    "BertForPreTraining": _PRETRAINING,
    "BertForMaskedLM": _PRETRAINING,
    "BertForNextSentencePrediction": _PRETRAINING,
    "BertModel": _PRETRAINING,
    "BertForSequenceClassification": Head(
        "BertForSequenceClassification",
        (Task.CLASSIFY_SEQUENCE,),
        {Task.CLASSIFY_SEQUENCE: ("classifier", "bert.pooler")},
        "sequence-classification head",
    ),
    "BertForTokenClassification": Head(
        "BertForTokenClassification",
        (Task.CLASSIFY_TOKENS,),
        {Task.CLASSIFY_TOKENS: ("classifier",)},
        "token-classification head",
    ),
    "BertForQuestionAnswering": Head(
        "BertForQuestionAnswering",
        (Task.ANSWER_QUESTION,),
        {Task.ANSWER_QUESTION: ("qa_outputs",)},
        "question-answering head",
    ),
}


class HeadMismatch(ValueError):
    """The checkpoint's head cannot serve a task the configuration asks of it."""


def architecture(config: Mapping[str, Any]) -> str:
    """The checkpoint's architecture from config.json ("BertModel" when it names none)."""
    names = config.get("architectures") or ["BertModel"]
    return str(names[0])


def head_for(config: Mapping[str, Any]) -> Head:
    arch = architecture(config)
    head = HEADS.get(arch)
    if head is None:
        known = ", ".join(sorted(HEADS))
        raise HeadMismatch(f"unsupported architecture {arch}; bertserve serves {known}")
    return head


def possible_tasks(config: Mapping[str, Any]) -> tuple[Task, ...]:
    """Every task the checkpoint's architecture can serve (if its head weights are present)."""
    return (*head_for(config).tasks, *ALWAYS)


def names(tasks: Iterable[Task]) -> str:
    return ", ".join(TASK_NAMES[t] for t in tasks) or "nothing"


def check_declared(config: Mapping[str, Any], declared: Iterable[Task], model: str) -> None:
    """Raise HeadMismatch when the configuration asks a task the head cannot serve."""
    possible = possible_tasks(config)
    wrong = [t for t in declared if t not in possible]
    if wrong:
        raise HeadMismatch(
            f"model {model!r} is configured for {names(wrong)} but its checkpoint is a "
            f"{architecture(config)} ({head_for(config).description}), which serves {names(possible)}"
        )
