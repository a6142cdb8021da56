"""The request limits (texts per request, characters per text) are checked before anything is
tokenized, for every task: a tokenizer that fails the test when touched never is."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bertserve.server.domain import (
    AnswerQuestionQuery,
    ClassifySequenceQuery,
    ClassifyTokensQuery,
    EmbedQuery,
    FillMaskQuery,
    NextSentenceQuery,
    RequestLimits,
    SequenceInput,
    TokenizeQuery,
)
from bertserve.server.errors import InvalidInput
from bertserve.server.tasks import (
    answer_question,
    classify_sequence,
    classify_tokens,
    embed,
    fill_mask,
    next_sentence,
    tokenize,
)

LIMITS = RequestLimits(max_inputs=4, max_text_chars=50, max_top_k=10, max_sequence_length=128)
OVER = "[MASK] " + "x" * 50  # 57 characters


class ExplodingTokenizer:
    """Has a mask token (FillMask looks for it in the raw text) and a vocabulary size, and
    nothing that tokenizes."""

    mask_token = "[MASK]"
    vocab_size = 100

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"tokenizer.{name} used before the limits were checked")


def _prepare(task: str) -> Callable[[int, str], Any]:
    """`prepare(n, text)`: run the task's front-end preparation on n inputs of `text`."""
    tok: Any = ExplodingTokenizer()
    runs: dict[str, Callable[[int, str], Any]] = {
        "fill_mask": lambda n, t: fill_mask.prepare(FillMaskQuery((t,) * n), tok, LIMITS),
        "next_sentence": lambda n, t: next_sentence.prepare(NextSentenceQuery(((t, "B."),) * n), tok, LIMITS),
        "classify_sequence": lambda n, t: classify_sequence.prepare(
            ClassifySequenceQuery((SequenceInput(t, None),) * n), tok, LIMITS
        ),
        "classify_tokens": lambda n, t: classify_tokens.prepare(ClassifyTokensQuery((t,) * n), tok, LIMITS),
        "answer_question": lambda n, t: answer_question.prepare(
            AnswerQuestionQuery((("Who?", t),) * n), tok, LIMITS
        ),
        "embed": lambda n, t: embed.prepare(EmbedQuery((t,) * n), tok, LIMITS),
        "tokenize": lambda n, t: tokenize.tokenize(TokenizeQuery((t,) * n), tok, LIMITS),
    }
    return runs[task]


TASKS = (
    "fill_mask",
    "next_sentence",
    "classify_sequence",
    "classify_tokens",
    "answer_question",
    "embed",
    "tokenize",
)


@pytest.mark.parametrize("task", TASKS)
def test_too_many_inputs_are_rejected_before_tokenizing(task: str) -> None:
    with pytest.raises(InvalidInput, match="at most 4 are allowed per request"):
        _prepare(task)(5, "A [MASK].")


@pytest.mark.parametrize("task", TASKS)
def test_too_long_text_is_rejected_before_tokenizing(task: str) -> None:
    with pytest.raises(InvalidInput, match="has 57 characters; at most 50 are allowed") as info:
        _prepare(task)(1, OVER)
    assert "xxxx" not in info.value.message


def test_fill_mask_target_too_long_is_rejected_before_tokenizing() -> None:
    query = FillMaskQuery(("A [MASK].",), targets=("y" * 51,))
    with pytest.raises(InvalidInput, match=r"targets\[0\] is too long"):
        fill_mask.prepare(query, ExplodingTokenizer(), LIMITS)  # type: ignore[arg-type]
