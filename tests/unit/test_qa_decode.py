"""Question answering windows and decoding (numpy only) equal the Hugging Face pipeline.

transformers 5 removed the `question-answering` pipeline, so the reference is its last
version's steps, rebuilt from what transformers still ships (tests/support/qa_reference.py).
The code under test sees only the tokenizer.json and the logits of right-padded batches, as
the server does.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer

from bertserve.server.tasks import qa
from bertserve.server.tasks.qa import Answer, QAPlan
from tests.support.qa_reference import QAPipelineReference

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


@dataclass
class Served:
    """A question-answering checkpoint: front-end tokenizer, the model and the fast HF tokenizer."""

    tokenizer: Tokenizer
    model: Any
    hf: Any

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

    def answer(self, question: str, context: str, **kw: Any) -> list[Answer]:
        """plan + replicas + decode, as the server does it."""
        plan_kw = {k: kw.pop(k) for k in ("max_length", "doc_stride") if k in kw}
        plan = qa.plan(question, context, self.tokenizer, **plan_kw)
        starts, ends = self.window_logits(plan)
        return qa.decode(plan, starts, ends, **kw)

    def pipeline_reference(
        self,
        question: str,
        context: str,
        *,
        max_length: int | None = None,
        doc_stride: int | None = None,
        top_k: int = 1,
        max_answer_len: int = 15,
        handle_impossible_answer: bool = False,
        align_to_words: bool = True,
    ) -> list[Answer]:
        """The question-answering pipeline of transformers 4.53 (tests/support/qa_reference.py)."""
        found = QAPipelineReference("", self.model, self.hf)(
            question,
            context,
            max_seq_len=max_length,
            doc_stride=doc_stride,
            top_k=top_k,
            max_answer_len=max_answer_len,
            handle_impossible_answer=handle_impossible_answer,
            align_to_words=align_to_words,
        )
        return [Answer(a["answer"], float(a["score"]), int(a["start"]), int(a["end"])) for a in found]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    import transformers

    from bertserve.workers.tiny_bert import TinyBertShape, build_tiny_bert

    transformers.logging.set_verbosity_error()
    path: Path = build_tiny_bert(
        tmp_path_factory.mktemp("qa"),
        seed=0,
        head="question-answering",
        shape=TinyBertShape(max_position_embeddings=MAX_LEN),
    )
    model = transformers.AutoModelForQuestionAnswering.from_pretrained(str(path))
    model.train(False)
    hf = transformers.AutoTokenizer.from_pretrained(str(path))
    assert hf.is_fast and hf.padding_side == "right" and hf.model_max_length == MAX_LEN
    return Served(Tokenizer.from_file(str(path / "tokenizer.json")), model, hf)


def assert_same(got: list[Answer], want: list[Answer], what: str) -> None:
    assert [(a.text, a.start, a.end) for a in got] == [(a.text, a.start, a.end) for a in want], what
    for g, w in zip(got, want, strict=True):
        assert abs(g.score - w.score) <= SCORE_TOL, (what, g, w)


def assert_not_vacuous(answers: list[Answer], context: str, top_k: int) -> None:
    """Real answers: several when several are asked (fewer than top_k when a window's spans share
    a text), distinct, positive, best first, and where they say they are."""
    assert len(answers) == 1 if top_k == 1 else 3 <= len(answers) <= top_k
    assert len({a.text.lower() for a in answers}) == len(answers)
    for a in answers:
        assert a.score > 0.0
        assert a.text == context[a.start : a.end]
    assert any(a.text for a in answers)
    assert all(x.score >= y.score for x, y in itertools.pairwise(answers))


# -- 1. one window ----------------------------------------------------------------------------


@pytest.mark.parametrize("top_k", [1, 5])
@pytest.mark.parametrize("max_answer_len", [3, 15])
def test_parity_on_short_contexts(served: Served, top_k: int, max_answer_len: int) -> None:
    for question, context in SHORT:
        plan = qa.plan(question, context, served.tokenizer, max_length=MAX_LEN)
        assert len(plan.windows) == 1
        kw: dict[str, Any] = {"max_length": MAX_LEN, "top_k": top_k, "max_answer_len": max_answer_len}
        want = served.pipeline_reference(question, context, **kw)
        assert_not_vacuous(want, context, top_k)
        assert_same(served.answer(question, context, **kw), want, f"{kw} {context!r}")


def test_parity_without_word_alignment(served: Served) -> None:
    """align_to_words=False: answers may start or end inside a word split into pieces."""
    partial = 0
    for question, context in SHORT:
        kw: dict[str, Any] = {"max_length": MAX_LEN, "top_k": 10, "align_to_words": False}
        want = served.pipeline_reference(question, context, **kw)
        assert_not_vacuous(want, context, 10)
        assert_same(served.answer(question, context, **kw), want, context)
        aligned = served.pipeline_reference(question, context, max_length=MAX_LEN, top_k=10)
        partial += {(a.start, a.end) for a in want} != {(a.start, a.end) for a in aligned}
    assert partial > 0, "no context made word alignment matter"


def test_short_contexts_cover_the_hard_cases(served: Served) -> None:
    """Sub-word pieces, accents, digits, punctuation and case-insensitive duplicates are in play."""
    tokens = [t for q, c in SHORT for t in served.tokenizer.encode(q, c).tokens]
    assert sum(t.startswith("##") for t in tokens) > 20
    assert {"São", "café", "Zürich", "—", "'", "(", "##8", "##9"} <= set(tokens)
    # The last context has the same word in three cases: the reference merges them into one answer.
    question, context = SHORT[3]
    merged = served.pipeline_reference(question, context, max_length=MAX_LEN, top_k=30, max_answer_len=1)
    assert len([a for a in merged if a.text.lower() == "paris"]) == 1


# -- 2. contexts several windows long --------------------------------------------------------


@pytest.mark.parametrize("doc_stride", [16, 32, None])
@pytest.mark.parametrize("top_k", [1, 10])
def test_parity_on_long_context(served: Served, doc_stride: int | None, top_k: int) -> None:
    plan = qa.plan(QUESTION, LONG_CONTEXT, served.tokenizer, MAX_LEN, doc_stride)
    context_tokens = len(served.tokenizer.encode(LONG_CONTEXT, add_special_tokens=False).ids)
    assert context_tokens >= 4 * MAX_LEN
    assert len(plan.windows) >= 4
    assert all(w.length <= MAX_LEN for w in plan.windows)
    kw: dict[str, Any] = {"max_length": MAX_LEN, "doc_stride": doc_stride, "top_k": top_k}
    want = served.pipeline_reference(QUESTION, LONG_CONTEXT, **kw)
    assert_not_vacuous(want, LONG_CONTEXT, top_k)
    assert_same(served.answer(QUESTION, LONG_CONTEXT, **kw), want, str(kw))
    if top_k > 1:
        # Answers come from across the context, not only from its first window.
        first = plan.windows[0]
        first_window_end = max(b for j, (_, b) in enumerate(first.offsets) if j and not first.p_mask[j])
        assert any(a.start >= first_window_end for a in want)


# -- 3. the null answer -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("context", "doc_stride"), [(SHORT[0][1], None), (LONG_CONTEXT, 16), (LONG_CONTEXT, None)]
)
def test_parity_with_impossible_answer(served: Served, context: str, doc_stride: int | None) -> None:
    kw: dict[str, Any] = {"max_length": MAX_LEN, "doc_stride": doc_stride, "handle_impossible_answer": True}
    wide = served.pipeline_reference(QUESTION, context, top_k=4000, **kw)
    rank = [a.text for a in wide].index("")
    assert wide[rank] == Answer("", wide[rank].score, 0, 0) and wide[rank].score > 0.0
    for top_k in (1, rank + 1, rank + 3):
        want = served.pipeline_reference(QUESTION, context, top_k=top_k, **kw)
        assert ("" in [a.text for a in want]) == (top_k > rank)
        assert_same(served.answer(QUESTION, context, top_k=top_k, **kw), want, f"{top_k} {kw}")


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


# -- 4. windows ---------------------------------------------------------------------------------


@pytest.mark.parametrize("doc_stride", [0, 16, 32, None, 40])
@pytest.mark.parametrize("context", [LONG_CONTEXT, SHORT[1][1]])
def test_windows_equal_fast_tokenizer_overflow(served: Served, context: str, doc_stride: int | None) -> None:
    stride = qa.default_doc_stride(MAX_LEN) if doc_stride is None else doc_stride
    plan = qa.plan(QUESTION, context, served.tokenizer, MAX_LEN, doc_stride)
    want = served.hf(
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


def test_question_is_not_truncated_to_max_question_len(served: Served) -> None:
    """The pipeline's max_question_len only applies to slow tokenizers: the question stays whole."""
    question = "Where is the capital of the country with the river and the mountain village?"
    n = len(served.tokenizer.encode(question, add_special_tokens=False).ids)
    plan = qa.plan(question, LONG_CONTEXT, served.tokenizer, MAX_LEN, 8, max_question_len=4)
    assert all(w.type_ids.count(0) == n + 2 for w in plan.windows)


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
        "import sys\nimport bertserve.server.tasks.qa\n"
        "print(','.join(sorted(m for m in ('torch', 'transformers') if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
