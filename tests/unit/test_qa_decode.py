"""Question answering windows and decoding (numpy only) equal the question-answering pipeline
of transformers 4.57.6, the last 4.x release.

The reference is that real pipeline, run in its own virtual environment on the same local
checkpoint (tests/support/hf4_reference.py; 5.x removed the pipeline). Every case of this module
goes to it in one batch (`REFERENCE_CASES`). The code under test sees only the tokenizer.json and
the logits of right-padded batches, as the server does; the pipeline runs each window alone, so
scores agree within SCORE_TOL and texts, offsets, order and counts exactly. Hand-worked cases
check the rules themselves (candidates per window, merging, the null answer, max_question_len).
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer

from bertserve.server.domain import AnswerQuestionQuery, RequestLimits
from bertserve.server.errors import InvalidInput
from bertserve.server.tasks import answer_question
from bertserve.server.tasks import answer_question_windows as qa
from bertserve.server.tasks.answer_question_windows import Answer, QAPlan
from bertserve.server.tokenization import TextTokenizer
from tests.support.hf4_reference import PipelineResult, QACase, answer_questions, terminal_log

MAX_LEN = 64  # the checkpoint's max_position_embeddings: the model's window
SCORE_TOL = 1e-5

QUESTION = "Where is the capital of France?"
SHORT = [
    (QUESTION, "Paris is the capital of France. It has 2,148,000 people; the river is the Seine!"),
    (
        "Which city has the café?",
        "Zürich and São Paulo are cities: the café in Zürich is naïve, über-quick — résumé, señor.",
    ),
    (
        "What happened in 1889?",
        "Kilimanjaro's unbelievably extraordinary internationalization happened in 1889 (approx.).",
    ),
    ("Who is the king?", "PARIS, Paris and paris: the king of Paris is 42 years old, said the queen."),
]
_SENTENCES = [
    "Paris is the capital of France and the city is on the river Seine.",
    "Berlin, the capital of Germany, had 3,645,000 people in 2019; Zürich has fewer.",
    "The extraordinary café in São Paulo serves Kilimanjaro coffee to naïve tourists!",
    "Madrid is in Spain, Rome is in Italy and Tokyo is the capital of Japan.",
    "In 1889 the university team walked quickly to the wonderful mountain village.",
    "Internationalization of music, film and art happened after the war (mostly).",
]
LONG_CONTEXT = " ".join(_SENTENCES * 2)


PLAN_OPTIONS = ("max_seq_len", "doc_stride")
"""The pipeline's options that shape the windows; the others go to decode."""


def options(**kw: Any) -> dict[str, Any]:
    """Pipeline call options, every case with the model's window; None means the default."""
    return {"max_seq_len": MAX_LEN} | {k: v for k, v in kw.items() if v is not None}


SHORT_GRID = [(top_k, max_answer_len) for top_k in (1, 5) for max_answer_len in (3, 15)]
LONG_GRID = [(doc_stride, top_k) for doc_stride in (16, 32, None) for top_k in (1, 10)]
IMPOSSIBLE = [(SHORT[0][1], None), (LONG_CONTEXT, 16), (LONG_CONTEXT, None)]
IMPOSSIBLE_TOP_K = (1, 2, 3, 5, 8, 13, 21, 34, 4000)


def exact_fit_case(served: Served) -> tuple[str, str, int]:
    """A question, a context and the top_k for which the one window's [L, L] score matrix has
    exactly top_k * 2 + 10 entries (L must be even)."""
    question, context = SHORT[2][0], "The king lived in Paris."
    length = served.plan(question, context, **options()).windows[0].length
    assert length % 2 == 0
    return question, context, (length * length - 10) // 2


def reference_cases(served: Served) -> Iterator[QACase]:
    """Every pipeline call the tests below compare with."""
    for top_k, max_answer_len in SHORT_GRID:
        for question, context in SHORT:
            yield QACase(question, context, options(top_k=top_k, max_answer_len=max_answer_len))
    for question, context in SHORT:
        for align in (True, False):
            yield QACase(question, context, options(top_k=10, align_to_words=align))
    yield QACase(*SHORT[3], options(top_k=30, max_answer_len=1))
    for doc_stride, top_k in LONG_GRID:
        yield QACase(QUESTION, LONG_CONTEXT, options(doc_stride=doc_stride, top_k=top_k))
    for context, doc_stride in IMPOSSIBLE:
        for top_k in IMPOSSIBLE_TOP_K:
            kw = options(doc_stride=doc_stride, top_k=top_k, handle_impossible_answer=True)
            yield QACase(QUESTION, context, kw)
    question, context, top_k = exact_fit_case(served)
    yield QACase(question, context, options(top_k=top_k))


def _key(question: str, context: str, kw: dict[str, Any]) -> tuple[str, str, frozenset[tuple[str, Any]]]:
    return question, context, frozenset(kw.items())


class Reference:
    """The pipeline's answers for `reference_cases()`, fetched in one subprocess."""

    def __init__(self, served: Served, config: pytest.Config) -> None:
        cases = list(reference_cases(served))
        results = answer_questions(served.path, cases, terminal_log(config))
        self._found = {
            _key(c.question, c.context, dict(c.options)): r for c, r in zip(cases, results, strict=True)
        }

    def __call__(self, question: str, context: str, **kw: Any) -> list[Answer]:
        result = self._result(question, context, kw)
        assert result.error is None, result.error
        return [Answer(a.answer, a.score, a.start, a.end) for a in result.answers]

    def error(self, question: str, context: str, **kw: Any) -> str | None:
        """What the pipeline raised on this case, if anything."""
        return self._result(question, context, kw).error

    def _result(self, question: str, context: str, kw: dict[str, Any]) -> PipelineResult:
        result = self._found.get(_key(question, context, kw))
        if result is None:
            pytest.fail(f"not among reference_cases(): {kw}")
        return result


@dataclass
class Served:
    """A question-answering checkpoint: its directory, the front-end tokenizer and the model."""

    path: Path
    tokenizer: Tokenizer
    model: Any

    def window_logits(self, plan: QAPlan) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The replicas' job: one right-padded batch of every window; raw logits of each."""
        import torch

        rows = len(plan.windows)
        width = max(w.length for w in plan.windows)
        ids = torch.zeros(rows, width, dtype=torch.long)
        types = torch.zeros(rows, width, dtype=torch.long)
        mask = torch.zeros(rows, width, dtype=torch.long)
        for row, win in enumerate(plan.windows):
            ids[row, : win.length] = torch.tensor(win.ids)
            types[row, : win.length] = torch.tensor(win.type_ids)
            mask[row, : win.length] = 1
        with torch.inference_mode():
            out = self.model(input_ids=ids, token_type_ids=types, attention_mask=mask)
        starts = out.start_logits.float().numpy()
        ends = out.end_logits.float().numpy()
        lengths = [w.length for w in plan.windows]
        return [starts[i, :n] for i, n in enumerate(lengths)], [ends[i, :n] for i, n in enumerate(lengths)]

    def plan(self, question: str, context: str, **kw: Any) -> QAPlan:
        return qa.plan(question, context, self.tokenizer, kw["max_seq_len"], kw.get("doc_stride"))

    def answer(self, question: str, context: str, **kw: Any) -> list[Answer]:
        """plan + replicas + decode, as the server does it, for the pipeline's call options."""
        plan = self.plan(question, context, **kw)
        starts, ends = self.window_logits(plan)
        decode_kw = {k: v for k, v in kw.items() if k not in PLAN_OPTIONS}
        return qa.decode(plan, starts, ends, **decode_kw)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    import transformers

    from bertserve.workers.tiny_bert import TinyBertShape, build_tiny_bert

    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    path: Path = build_tiny_bert(
        tmp_path_factory.mktemp("qa"),
        seed=0,
        head="question-answering",
        shape=TinyBertShape(max_position_embeddings=MAX_LEN),
    )
    model = transformers.AutoModelForQuestionAnswering.from_pretrained(str(path))
    model.train(False)
    return Served(path, Tokenizer.from_file(str(path / "tokenizer.json")), model)


@pytest.fixture(scope="module")
def reference(served: Served, request: pytest.FixtureRequest) -> Reference:
    return Reference(served, request.config)


def assert_same(got: list[Answer], want: list[Answer], what: str) -> None:
    assert [(a.text, a.start, a.end) for a in got] == [(a.text, a.start, a.end) for a in want], what
    for g, w in zip(got, want, strict=True):
        assert abs(g.score - w.score) <= SCORE_TOL, (what, g, w)


def assert_not_vacuous(answers: list[Answer], context: str, top_k: int) -> None:
    """Real answers: top_k of them, distinct, best first, where they say they are, the best ones
    with positive scores."""
    assert len(answers) == top_k
    assert len({a.text.lower() for a in answers}) == len(answers)
    assert answers[0].score > 0.0 and answers[0].text
    for a in answers:
        assert a.score >= 0.0
        assert a.text == context[a.start : a.end]
    assert all(x.score >= y.score for x, y in itertools.pairwise(answers))


# -- 1. one window ----------------------------------------------------------------------------


@pytest.mark.parametrize(("top_k", "max_answer_len"), SHORT_GRID)
def test_parity_on_short_contexts(
    served: Served, reference: Reference, top_k: int, max_answer_len: int
) -> None:
    for question, context in SHORT:
        kw = options(top_k=top_k, max_answer_len=max_answer_len)
        assert len(served.plan(question, context, **kw).windows) == 1
        want = reference(question, context, **kw)
        assert_not_vacuous(want, context, top_k)
        assert_same(served.answer(question, context, **kw), want, f"{kw} {context!r}")


def test_parity_without_word_alignment(served: Served, reference: Reference) -> None:
    """align_to_words=False: answers may start or end inside a word split into pieces, and each
    window keeps only top_k candidates (the pipeline adds more only to make up for alignment)."""
    partial = 0
    for question, context in SHORT:
        kw = options(top_k=10, align_to_words=False)
        want = reference(question, context, **kw)
        assert_not_vacuous(want, context, 10)
        assert_same(served.answer(question, context, **kw), want, context)
        aligned = reference(question, context, **options(top_k=10, align_to_words=True))
        assert_same(served.answer(question, context, **options(top_k=10)), aligned, context)
        partial += {(a.start, a.end) for a in want} != {(a.start, a.end) for a in aligned}
    assert partial > 0, "no context made word alignment matter"


def test_short_contexts_cover_the_hard_cases(served: Served, reference: Reference) -> None:
    """Sub-word pieces, accents, digits, punctuation and case-insensitive duplicates are in play."""
    tokens = [t for q, c in SHORT for t in served.tokenizer.encode(q, c).tokens]
    assert sum(t.startswith("##") for t in tokens) > 20
    assert {"São", "café", "Zürich", "—", "'", "(", "##8", "##9"} <= set(tokens)
    # The last context has the same word in three cases: the reference merges them into one answer.
    question, context = SHORT[3]
    kw = options(top_k=30, max_answer_len=1)
    merged = reference(question, context, **kw)
    assert len([a for a in merged if a.text.lower() == "paris"]) == 1
    assert_same(served.answer(question, context, **kw), merged, str(kw))


# -- 2. contexts several windows long --------------------------------------------------------


@pytest.mark.parametrize(("doc_stride", "top_k"), LONG_GRID)
def test_parity_on_long_context(
    served: Served, reference: Reference, doc_stride: int | None, top_k: int
) -> None:
    kw = options(doc_stride=doc_stride, top_k=top_k)
    plan = served.plan(QUESTION, LONG_CONTEXT, **kw)
    context_tokens = len(served.tokenizer.encode(LONG_CONTEXT, add_special_tokens=False).ids)
    assert context_tokens >= 4 * MAX_LEN
    assert len(plan.windows) >= 4
    assert all(w.length <= MAX_LEN for w in plan.windows)
    want = reference(QUESTION, LONG_CONTEXT, **kw)
    assert_not_vacuous(want, LONG_CONTEXT, top_k)
    assert_same(served.answer(QUESTION, LONG_CONTEXT, **kw), want, str(kw))
    if top_k > 1:
        # Answers come from across the context, not only from its first window.
        first = plan.windows[0]
        first_window_end = max(b for j, (_, b) in enumerate(first.offsets) if j and not first.p_mask[j])
        assert any(a.start >= first_window_end for a in want)


# -- 3. the null answer -----------------------------------------------------------------------


@pytest.mark.parametrize(("context", "doc_stride"), IMPOSSIBLE)
def test_parity_with_impossible_answer(
    served: Served, reference: Reference, context: str, doc_stride: int | None
) -> None:
    """The empty answer (the smallest null score, start = end = 0) is among the answers when it
    ranks within top_k; each top_k has its own candidates, so its rank depends on top_k."""
    ranked = []
    for top_k in IMPOSSIBLE_TOP_K:
        kw = options(doc_stride=doc_stride, top_k=top_k, handle_impossible_answer=True)
        want = reference(QUESTION, context, **kw)
        assert_same(served.answer(QUESTION, context, **kw), want, str(kw))
        null = [a for a in want if (a.text, a.start, a.end) == ("", 0, 0) and a.score > 0.0]
        ranked.append(len(null) == 1)
    assert not ranked[0] and ranked[-1], "the null answer must rank below the first and within the last"


def test_null_answer_wins_when_cls_dominates(served: Served) -> None:
    """Hand-made logits: [CLS] far above the rest makes the empty answer the best one, with the
    smallest null score over the windows; without handle_impossible_answer it never appears."""
    plan = qa.plan(QUESTION, LONG_CONTEXT, served.tokenizer, MAX_LEN, 16)
    starts = [np.zeros(w.length, np.float32) for w in plan.windows]
    ends = [np.zeros(w.length, np.float32) for w in plan.windows]
    for i, (s, e) in enumerate(zip(starts, ends, strict=True)):
        s[0] = e[0] = 8.0 - i / 4
    best = qa.decode(plan, starts, ends, top_k=3, handle_impossible_answer=True)
    null_scores = []
    for i, win in enumerate(plan.windows):
        n = sum(not m for m in win.p_mask) - 1  # context tokens of the window
        p_cls = np.exp(8.0 - i / 4) / (np.exp(8.0 - i / 4) + n)
        null_scores.append(p_cls**2)
    assert best[0].text == "" and (best[0].start, best[0].end) == (0, 0)
    assert best[0].score == pytest.approx(min(null_scores), rel=1e-5)
    assert all(a.text for a in best[1:])
    assert all(a.text for a in qa.decode(plan, starts, ends, top_k=3))


def test_spans_respect_max_answer_len_and_merge_equal_texts(served: Served) -> None:
    """Hand-made logits favouring the tokens of "PARIS", "Paris", "paris" and "Paris": every
    one-token span among them aligns to its word, and equal texts (ignoring case) merge into the
    first one seen, the best, with the sum of their scores."""
    question, context = SHORT[3]
    plan = qa.plan(question, context, served.tokenizer, MAX_LEN)
    win = plan.windows[0]
    words = [None if span is None else context[span[0] : span[1]] for span in win.word_spans]
    paris = [i for i, w in enumerate(words) if not win.p_mask[i] and w is not None and w.lower() == "paris"]
    assert len(paris) > 4  # "PARIS" and "paris" are split into pieces
    logits = np.full(win.length, -2.0, np.float32)
    logits[paris] = 3.0 - 0.01 * np.arange(len(paris), dtype=np.float32)
    got = qa.decode(plan, [logits], [logits], top_k=30, max_answer_len=1)
    assert got[0].text == "PARIS" and (got[0].start, got[0].end) == (0, 5)
    allowed = np.array([not m for m in win.p_mask])
    p = np.where(allowed, np.exp(logits.astype(np.float64)), 0.0)
    p /= p.sum()
    assert got[0].score == pytest.approx(float((p[paris] ** 2).sum()), rel=1e-5)
    assert [a.text.lower() for a in got].count("paris") == 1
    # Unaligned spans of up to three tokens: all lengths from one to three occur, never four.
    spans = qa.decode(plan, [logits], [logits], top_k=50, max_answer_len=3, align_to_words=False)
    sizes = set()
    for a in spans:
        inside = [
            not m and x >= a.start and y <= a.end
            for m, (x, y) in zip(win.p_mask[1:], win.offsets[1:], strict=True)
        ]
        sizes.add(sum(inside))
    assert sizes == {1, 2, 3}


def test_candidates_per_window_follow_transformers_4_54() -> None:
    assert qa.candidates_per_window(1, align_to_words=True) == 12
    assert qa.candidates_per_window(5, align_to_words=True) == 20
    assert qa.candidates_per_window(5, align_to_words=False) == 5


def _one_text_against_one_span(served: Served) -> tuple[QAPlan, np.ndarray, float, float]:
    """Hand-made logits over "...extraordinary internationalization happened in 1889 (approx.).":
    "extraordinary" (one token) scores e^3 at start and end, each of the four pieces of "1889"
    ("1", "##8", "##8", "##9") e^2, everything else e^-4. The best span is "extraordinary", but
    the 10 spans inside "1889" all align to that word and together score more. Returns the plan,
    the logits and the two answers' scores worked out by hand."""
    question, context = SHORT[2]
    plan = qa.plan(question, context, served.tokenizer, MAX_LEN)
    win = plan.windows[0]
    words = [None if span is None else context[span[0] : span[1]] for span in win.word_spans]
    single = [i for i, w in enumerate(words) if not win.p_mask[i] and w == "extraordinary"]
    pieces = [i for i, w in enumerate(words) if not win.p_mask[i] and w == "1889"]
    assert len(single) == 1 and len(pieces) == 4 and pieces[0] - single[0] > 4
    logits = np.full(win.length, -4.0, np.float32)
    logits[single] = 3.0
    logits[pieces] = 2.0
    allowed = np.array([not m for m in win.p_mask])
    p = np.where(allowed, np.exp(logits.astype(np.float64)), 0.0)
    p /= p.sum()
    return plan, logits, float(p[single[0]] ** 2), float(10 * p[pieces[0]] ** 2)


def test_the_window_keeps_top_k_times_2_plus_10_spans_before_equal_texts_merge(served: Served) -> None:
    """Keeping top_k spans per window (transformers <= 4.53) answered "extraordinary"; keeping
    top_k * 2 + 10 (4.54 and later) merges the ten spans of "1889" into the better answer."""
    plan, logits, single, merged = _one_text_against_one_span(served)
    assert single < merged
    best = qa.decode(plan, [logits], [logits], top_k=1, max_answer_len=4)
    at = plan.context.index("1889")
    assert [(a.text, a.start, a.end) for a in best] == [("1889", at, at + 4)]
    assert best[0].score == pytest.approx(merged, rel=1e-5)
    old = qa.decode(plan, [logits], [logits], top_k=1, max_answer_len=4, candidates=1)
    assert [a.text for a in old] == ["extraordinary"] and old[0].score == pytest.approx(single, rel=1e-5)


def test_merged_spans_no_longer_leave_the_list_short(served: Served) -> None:
    """With top_k spans per window, three spans ("extraordinary" and two of "1889") made two
    answers for top_k=3; with the pipeline's candidates there are three."""
    plan, logits, single, merged = _one_text_against_one_span(served)
    old = qa.decode(plan, [logits], [logits], top_k=3, max_answer_len=4, candidates=3)
    assert old[1].score == pytest.approx(merged / 5, rel=1e-5)  # two of the ten spans
    assert [a.text for a in old] == ["extraordinary", "1889"]
    answers = qa.decode(plan, [logits], [logits], top_k=3, max_answer_len=4)
    assert [a.text for a in answers[:2]] == ["1889", "extraordinary"] and len(answers) == 3
    assert answers[1].score == pytest.approx(single, rel=1e-5)


def test_a_window_with_exactly_as_many_entries_as_candidates_is_answered(
    served: Served, reference: Reference
) -> None:
    """Where a window's [L, L] matrix has exactly top_k * 2 + 10 entries, the pipeline fails
    (numpy's argpartition: kth out of bounds); bertserve takes every entry instead."""
    question, context, top_k = exact_fit_case(served)
    kw = options(top_k=top_k)
    assert "out of bounds" in (reference.error(question, context, **kw) or "")
    answers = served.answer(question, context, **kw)
    texts = {a.text.lower() for a in answers}
    assert 3 < len(texts) == len(answers) < top_k and answers[0].score > 0.0
    # Every span of the window is among the candidates: asking for more changes nothing.
    assert_same(served.answer(question, context, **options(top_k=top_k + 1)), answers, "all spans")


# -- 4. windows ---------------------------------------------------------------------------------


@pytest.mark.parametrize("doc_stride", [0, 16, 32, None, 40])
@pytest.mark.parametrize("context", [LONG_CONTEXT, SHORT[1][1]])
def test_windows_equal_fast_tokenizer_overflow(served: Served, context: str, doc_stride: int | None) -> None:
    import transformers

    hf = transformers.AutoTokenizer.from_pretrained(str(served.path))
    assert hf.is_fast and hf.padding_side == "right" and hf.model_max_length == MAX_LEN
    stride = qa.default_doc_stride(MAX_LEN) if doc_stride is None else doc_stride
    plan = qa.plan(QUESTION, context, served.tokenizer, MAX_LEN, doc_stride)
    want = hf(
        QUESTION,
        context,
        truncation="only_second",
        max_length=MAX_LEN,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    assert [list(w.ids) for w in plan.windows] == want["input_ids"]
    assert [list(w.type_ids) for w in plan.windows] == want["token_type_ids"]
    assert [list(w.offsets) for w in plan.windows] == [[tuple(o) for o in m] for m in want["offset_mapping"]]
    for i, win in enumerate(plan.windows):
        seq = want.sequence_ids(i)
        assert list(win.p_mask) == [s != 1 and j != 0 for j, s in enumerate(seq)]
    if context == LONG_CONTEXT:
        assert len(plan.windows) >= 4
        # Consecutive windows share doc_stride context tokens.
        for a, b in zip(plan.windows, plan.windows[1:], strict=False):
            ctx_a = [t for t, m in zip(a.ids, a.p_mask, strict=True) if not m][1:]
            ctx_b = [t for t, m in zip(b.ids, b.p_mask, strict=True) if not m][1:]
            if stride:
                assert ctx_a[-stride:] == ctx_b[:stride]
    else:
        assert len(plan.windows) == 1


def test_defaults_follow_the_pipeline() -> None:
    assert qa.default_max_length(512) == 384 and qa.default_max_length(64) == 64
    assert qa.default_doc_stride(384) == 128 and qa.default_doc_stride(64) == 32
    assert qa.default_doc_stride(257) == 128 and qa.default_doc_stride(1) == 0


LONG_QUESTION = "Where is the capital of the country with the river and the mountain village?"


def test_question_longer_than_max_question_len_is_rejected_not_cut(served: Served) -> None:
    """The pipeline's fast-tokenizer path ignores max_question_len (only its slow path cuts the
    question); bertserve rejects a longer question, and never cuts one."""
    n = len(served.tokenizer.encode(LONG_QUESTION, add_special_tokens=False).ids)
    assert n > 8
    with pytest.raises(qa.QuestionTooLong) as err:
        qa.plan(LONG_QUESTION, LONG_CONTEXT, served.tokenizer, MAX_LEN, 8, max_question_len=n - 1)
    assert (err.value.tokens, err.value.limit) == (n, n - 1)
    assert str(err.value) == f"the question is {n} tokens long; max_question_len is {n - 1}"
    plan = qa.plan(LONG_QUESTION, LONG_CONTEXT, served.tokenizer, MAX_LEN, 8, max_question_len=n)
    assert len(plan.windows) > 1 and all(w.type_ids.count(0) == n + 2 for w in plan.windows)
    with pytest.raises(ValueError, match="max_question_len must be at least 1"):
        qa.plan(QUESTION, LONG_CONTEXT, served.tokenizer, MAX_LEN, max_question_len=0)


def test_prepare_names_the_question_its_length_and_the_limit(served: Served) -> None:
    tokenizer = TextTokenizer(served.path, MAX_LEN)
    limits = RequestLimits(max_inputs=4, max_text_chars=1000, max_top_k=10, max_sequence_length=MAX_LEN)
    n = len(served.tokenizer.encode(LONG_QUESTION, add_special_tokens=False).ids)
    inputs = ((QUESTION, SHORT[0][1]), (LONG_QUESTION, SHORT[0][1]))
    with pytest.raises(InvalidInput) as err:
        answer_question.prepare(AnswerQuestionQuery(inputs, max_question_len=n - 1), tokenizer, limits)
    assert err.value.message == f"inputs[1].question is {n} tokens long; max_question_len is {n - 1}"
    plans = answer_question.prepare(AnswerQuestionQuery(inputs, max_question_len=n), tokenizer, limits)
    assert len(plans) == 2
    assert len(answer_question.prepare(AnswerQuestionQuery(inputs), tokenizer, limits)) == 2  # default 64


# -- 5. errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "context", "doc_stride"),
    [
        (QUESTION, LONG_CONTEXT, MAX_LEN + 1),  # the pipeline's own check
        (QUESTION, SHORT[0][1], 62),  # tokenizers: stride >= max_len - 2 special tokens
        (QUESTION, LONG_CONTEXT, 60),  # more overlap than context per window (tokenizers would panic)
        (QUESTION, LONG_CONTEXT, -1),
        ("Where is " + "the capital of France and " * 12 + "Zürich?", SHORT[1][1], None),  # question too long
        ("Where is " + "the capital of France and " * 12 + "Zürich?", "Paris.", 0),
        (QUESTION, "", None),
        ("", SHORT[0][1], None),
    ],
)
def test_errors_do_not_echo_the_texts(served: Served, question: str, context: str, doc_stride: int) -> None:
    with pytest.raises(ValueError) as err:
        qa.plan(question, context, served.tokenizer, MAX_LEN, doc_stride)
    message = str(err.value)
    assert message and "\n" not in message
    for text in (question, context):
        assert not text or text not in message
        for word in text.replace("?", " ").replace(".", " ").split():
            if word[0].isupper() or word[0].isdigit():  # names and numbers, not words like "the"
                assert word not in message, message


def test_long_question_with_short_context_fits(served: Served) -> None:
    """Nothing to cut, nothing to reject: a long question with a context that fits is one window."""
    question = "Where is the capital of France and " * 6 + "Zürich?"
    plan = qa.plan(question, "Paris.", served.tokenizer, MAX_LEN, 40)
    assert len(plan.windows) == 1 and plan.windows[0].length <= MAX_LEN


def test_decode_rejects_mismatched_logits(served: Served) -> None:
    plan = qa.plan(QUESTION, LONG_CONTEXT, served.tokenizer, MAX_LEN)
    starts, ends = served.window_logits(plan)
    with pytest.raises(ValueError):
        qa.decode(plan, starts[:-1], ends[:-1])
    with pytest.raises(ValueError):
        qa.decode(plan, [np.zeros(3, np.float32), *starts[1:]], ends)
    with pytest.raises(ValueError):
        qa.decode(plan, starts, ends, top_k=0)
    with pytest.raises(ValueError):
        qa.decode(plan, starts, ends, max_answer_len=0)


def test_module_imports_neither_torch_nor_transformers() -> None:
    code = (
        "import sys\nimport bertserve.server.tasks.answer_question_windows\n"
        "print(','.join(sorted(m for m in ('torch', 'transformers') if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
