"""Character offsets (Tokenize's tokens, ClassifyTokens' entities, AnswerQuestion's answers) count
Unicode code points of the text as sent: Python str indices, as the protos document. Text after
characters outside the Basic Multilingual Plane pins the unit: UTF-16 (JavaScript) and UTF-8 (Go)
offsets of the same word are larger."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bertserve.server.checkpoint import resolve_checkpoint
from bertserve.server.domain import RequestLimits, Timing, TokenizeAnswer, TokenizeQuery
from bertserve.server.tasks import answer_question_windows as qa
from bertserve.server.tasks import classify_tokens_windows as ner
from bertserve.server.tasks import tokenize
from bertserve.server.tokenization import TextTokenizer

# Two emoji and a mathematical letter (each one code point, two UTF-16 units, four UTF-8 bytes) and
# "São" (ã: one code point, two UTF-8 bytes) before the word the tests look for.
TEXT = "🙂😀 São Paulo, \U0001d54f then Paris."  # U+1D54F: MATHEMATICAL DOUBLE-STRUCK CAPITAL X
WORD = "Paris"
LIMITS = RequestLimits(max_inputs=4, max_text_chars=1000, max_top_k=10, max_sequence_length=128)


def _code_points(text: str, word: str) -> tuple[int, int]:
    start = text.index(word)
    return start, start + len(word)


@pytest.fixture(scope="module")
def tok(tiny_checkpoint: Path) -> TextTokenizer:
    return TextTokenizer(resolve_checkpoint(str(tiny_checkpoint)).files_dir, 128)


def test_the_text_tells_the_units_apart() -> None:
    start, _ = _code_points(TEXT, WORD)
    utf16 = len(TEXT[:start].encode("utf-16-le")) // 2
    utf8 = len(TEXT[:start].encode("utf-8"))
    assert len({start, utf16, utf8}) == 3


def test_tokenize_offsets_are_code_points_of_the_text(tok: TextTokenizer) -> None:
    [result] = tokenize.tokenize(TokenizeQuery((TEXT,)), tok, LIMITS)
    response = tokenize.RPC.to_response(TokenizeAnswer((result,), "m", 128, Timing(0, 0, 0, 0)))
    tokens = response.results[0].tokens
    assert [(t.start, t.end) for t in tokens if t.token == WORD] == [_code_points(TEXT, WORD)]
    for t in tokens:
        if t.special:
            assert (t.start, t.end) == (0, 0)
        elif t.token != "[UNK]":
            assert TEXT[t.start : t.end] == t.token.removeprefix("##")


def test_entity_offsets_are_code_points_of_the_text(tok: TextTokenizer) -> None:
    plan = ner.plan(TEXT, tok.backend, 128)
    target = tok.backend.token_to_id(WORD)
    logits = []
    for window in plan.windows:
        scores = np.zeros((len(window.ids), 2), dtype=np.float32)
        scores[[i for i, t in enumerate(window.ids) if t == target], 1] = 10.0  # B-LOC
        logits.append(scores)
    entities = ner.decode(plan, logits, {0: "O", 1: "B-LOC"}, "simple", ["O"], tok.backend)
    assert [(e.label, e.word, e.start, e.end) for e in entities] == [("LOC", WORD, *_code_points(TEXT, WORD))]


def test_answer_offsets_are_code_points_of_the_context(tok: TextTokenizer) -> None:
    plan = qa.plan("Where?", TEXT, tok.backend, 128)
    [window] = plan.windows
    target = tok.backend.token_to_id(WORD)
    position = next(i for i, t in enumerate(window.ids) if t == target and not window.p_mask[i])
    start_logits = np.zeros(window.length, dtype=np.float32)
    end_logits = np.zeros(window.length, dtype=np.float32)
    start_logits[position] = end_logits[position] = 20.0
    [answer] = qa.decode(plan, [start_logits], [end_logits], top_k=1)
    assert (answer.text, answer.start, answer.end) == (WORD, *_code_points(TEXT, WORD))
