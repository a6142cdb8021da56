"""Extractive question answering: windows before the model, answer spans after it.

Reproduces the Hugging Face `question-answering` pipeline of transformers 4.57.6, the last 4.x
release (fast tokenizer, question first, as for every BERT-family model), with numpy and the
`tokenizers` library only; transformers 5 removed that pipeline. tests/support/hf4_reference.py
runs the real 4.57.6 pipeline as the tests' reference.

- Windows. max_seq_len defaults to min(model_max_length, 384) (`default_max_length`), doc_stride
  to min(max_seq_len // 2, 128) (`default_doc_stride`). The pair (question, context) is encoded
  with truncation "only_second", stride doc_stride and overflowing tokens, without padding: each
  window is [CLS] question [SEP] part of the context [SEP], consecutive parts sharing doc_stride
  tokens. The question itself is never cut. A question longer than `max_question_len` tokens is
  rejected (`QuestionTooLong`): the pipeline's fast-tokenizer path ignores max_question_len (only
  its slow-tokenizer path truncates the question), and a silently shortened question would be
  a different question. A question that leaves no room for the context is an error (the
  tokenizer's "sequence too short"); so is a doc_stride larger than max_seq_len, or one the
  tokenizer rejects.
- Scores, per window. Tokens outside the context cannot be in an answer (p_mask), except [CLS],
  which stays in the softmax. Their logits are set to -10000, start and end logits go through a
  float32 softmax each, the null score is p_start[0] * p_end[0], then position 0 is zeroed. A
  span (s, e) scores p_start[s] * p_end[e] when s <= e < s + max_answer_len, else 0. Each window
  contributes its best `candidates_per_window(top_k)` = top_k * 2 + 10 entries of the whole
  [L, L] score matrix (argmax for 1, else a partition and a sort), less those with a token
  outside the context. When the window has fewer spans that score above zero, score-0 entries
  fill the count as in the pipeline: spans starting at [CLS] (their text starts the context),
  spans ending before they start (empty text) and spans longer than max_answer_len.
- Answers, over windows in order. A span's characters come from the words of its first and last
  tokens as far as they lie in that window (`align_to_words`), else from the token offsets (also
  when a token has no word, such as [CLS]). Spans whose texts are equal ignoring case are merged
  into the first one seen, their scores added. With `handle_impossible_answer`, the empty answer
  (smallest null score over the windows, start = end = 0) joins them, unmerged; all are sorted by
  score (a stable sort, best first) and cut to top_k.
- One deliberate difference: when a window's [L, L] matrix has exactly as many entries as the
  candidates asked for, the pipeline fails (numpy's argpartition with kth = size); here every
  entry is taken, sorted.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from tokenizers import Encoding, Tokenizer

DEFAULT_MAX_SEQ_LEN = 384
"""The pipeline's cap on max_seq_len when none is given: min(model_max_length, 384)."""
MAX_DOC_STRIDE = 128
"""The pipeline's cap on the default doc_stride: min(max_seq_len // 2, 128)."""
MASKED_LOGIT = np.float32(-10000.0)
"""What the pipeline writes over the logits of tokens that cannot be in an answer."""
_NULL_SCORE_START = 1000000.0
"""The pipeline's starting value for the smallest null score (larger than any probability)."""
_QUESTION = 0
_CONTEXT = 1
"""Sequence indices of the question and the context in a (question, context) pair."""

_Span = tuple[int, int]
_F32 = npt.NDArray[np.float32]


class QuestionTooLong(ValueError):
    """The question has more tokens than max_question_len. The message names neither the
    question nor its tokens."""

    def __init__(self, tokens: int, limit: int) -> None:
        super().__init__(f"the question is {tokens} tokens long; max_question_len is {limit}")
        self.tokens = tokens
        self.limit = limit


@dataclass(frozen=True)
class Answer:
    text: str
    score: float
    start: int
    """Character offsets into the context: text == context[start:end]."""
    end: int


@dataclass(frozen=True)
class QAWindow:
    """One model input: [CLS] question [SEP] context part [SEP], no padding."""

    ids: tuple[int, ...]
    type_ids: tuple[int, ...]
    p_mask: tuple[bool, ...]
    """True for tokens that cannot be in an answer: all but the context and [CLS]."""
    offsets: tuple[_Span, ...]
    """Character span of each token in its own text (context tokens: in the context)."""
    word_spans: tuple[_Span | None, ...]
    """Per token: the characters of the context word with the token's word index, as far as that
    word's tokens lie in this window; None when there is none (special tokens, [CLS])."""

    @property
    def length(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class QAPlan:
    question: str
    context: str
    windows: tuple[QAWindow, ...]


def default_max_length(model_max_length: int) -> int:
    """max_seq_len when the request gives none, as the pipeline picks it."""
    return min(model_max_length, DEFAULT_MAX_SEQ_LEN)


def default_doc_stride(max_length: int) -> int:
    """doc_stride when the request gives none, as the pipeline picks it."""
    return min(max_length // 2, MAX_DOC_STRIDE)


def plan(
    question: str,
    context: str,
    tokenizer: Tokenizer,
    max_length: int,
    doc_stride: int | None = None,
    max_question_len: int = 64,
    *,
    cls_token_id: int | None = None,
) -> QAPlan:
    """Windows exactly as the pipeline makes them for max_seq_len=max_length and doc_stride
    (None: the pipeline's default). Raises ValueError, with a one-line message that never
    echoes the texts, when the question is too long for the window or doc_stride is invalid,
    and its subclass QuestionTooLong when the question has more than max_question_len tokens
    (special tokens not counted). The question is never truncated.

    cls_token_id: the token kept answerable for the null answer; by default the first token of
    the window when that is a special token ([CLS] for BERT, <s> for RoBERTa).
    """
    if max_question_len < 1:
        raise ValueError(f"max_question_len must be at least 1, got {max_question_len}")
    if max_length < 1:
        raise ValueError(f"max_seq_len must be at least 1, got {max_length}")
    stride = default_doc_stride(max_length) if doc_stride is None else doc_stride
    if stride < 0:
        raise ValueError(f"doc_stride must not be negative, got {stride}")
    if stride > max_length:
        raise ValueError(f"doc_stride ({stride}) is larger than max_seq_len ({max_length})")
    if not question:
        raise ValueError("the question is empty")
    if not context:
        raise ValueError("the context is empty")
    single_specials = tokenizer.num_special_tokens_to_add(False)
    if stride >= max_length - single_specials:
        # The check tokenizers makes when truncation is set (it counts a single sequence's tokens).
        raise ValueError(
            f"doc_stride ({stride}) must be smaller than max_seq_len ({max_length}) "
            f"less {single_specials} special tokens"
        )

    whole = _copy(tokenizer, None, 0).encode(question, context)
    question_tokens = sum(1 for seq in whole.sequence_ids if seq == _QUESTION)
    if question_tokens > max_question_len:
        raise QuestionTooLong(question_tokens, max_question_len)
    if len(whole.ids) <= max_length:
        encodings = [whole]
    else:
        context_tokens = sum(1 for s in whole.sequence_ids if s == _CONTEXT)
        room = max_length - (len(whole.ids) - context_tokens)
        if room <= 0:
            raise ValueError(
                f"the question takes {len(whole.ids) - context_tokens} tokens with the special tokens, "
                f"which leaves no room for the context in max_seq_len ({max_length}) tokens"
            )
        if stride >= room:
            # tokenizers would panic: the overlap must be shorter than each window's context part.
            raise ValueError(
                f"doc_stride ({stride}) must be smaller than the {room} context tokens that fit in "
                f"each window after the question"
            )
        first = _copy(tokenizer, max_length, stride).encode(question, context)
        encodings = [first, *first.overflowing]

    if cls_token_id is None and whole.ids and whole.sequence_ids[0] is None:
        cls_token_id = whole.ids[0]
    windows = tuple(_window(enc, cls_token_id) for enc in encodings)
    return QAPlan(question=question, context=context, windows=windows)


def decode(
    plan: QAPlan,
    start_logits: Sequence[npt.ArrayLike],
    end_logits: Sequence[npt.ArrayLike],
    top_k: int = 1,
    max_answer_len: int = 15,
    handle_impossible_answer: bool = False,
    align_to_words: bool = True,
    candidates: int | None = None,
) -> list[Answer]:
    """Best answers over all windows, best first, at most top_k, as the pipeline returns them.

    start_logits[i], end_logits[i]: the raw logits of window i, [len(windows[i].ids)] (float32;
    other float types are converted, as the pipeline converts bfloat16). With
    handle_impossible_answer the empty answer (text "", start = end = 0) is among the candidates
    with the smallest null score over the windows. candidates: the spans each window keeps
    before equal texts merge; None (the server's choice) is the pipeline's
    `candidates_per_window`, top_k alone is what transformers <= 4.53 kept.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if max_answer_len < 1:
        raise ValueError(f"max_answer_len must be at least 1, got {max_answer_len}")
    n = len(plan.windows)
    if len(start_logits) != n or len(end_logits) != n:
        raise ValueError(
            f"expected start and end logits for {n} windows, got {len(start_logits)} and {len(end_logits)}"
        )

    if candidates is None:
        candidates = candidates_per_window(top_k, align_to_words)
    elif candidates < 1:
        raise ValueError(f"candidates must be at least 1, got {candidates}")
    null_score = _NULL_SCORE_START
    merged: dict[str, _Candidate] = {}  # by lower-cased text, in the order first seen
    for i, window in enumerate(plan.windows):
        p_start = _probabilities(start_logits[i], window, f"start_logits[{i}]")
        p_end = _probabilities(end_logits[i], window, f"end_logits[{i}]")
        if handle_impossible_answer:
            null_score = min(null_score, float(p_start[0] * p_end[0]))
        p_start[0] = p_end[0] = 0.0
        for s, e, score in _top_spans(p_start, p_end, window.p_mask, candidates, max_answer_len):
            char_start, char_end = _characters(window, s, e, align_to_words)
            text = plan.context[char_start:char_end]
            seen = merged.setdefault(text.lower(), _Candidate(text, 0.0, char_start, char_end))
            seen.score += score

    answers = [Answer(c.text, c.score, c.start, c.end) for c in merged.values()]
    if handle_impossible_answer:
        answers.append(Answer(text="", score=null_score, start=0, end=0))
    answers.sort(key=lambda answer: answer.score, reverse=True)  # stable, like the pipeline's sorted()
    return answers[:top_k]


def candidates_per_window(top_k: int, align_to_words: bool) -> int:
    """Spans each window contributes before equal texts merge: top_k * 2 + 10 with word
    alignment (transformers >= 4.54: aligning spans to words makes several spans one text, and
    the extra candidates keep the merged list from coming up short), else top_k."""
    return top_k * 2 + 10 if align_to_words else top_k


@dataclass
class _Candidate:
    text: str
    score: float
    start: int
    end: int


# ---- windows ---------------------------------------------------------------------------------


def _window(enc: Encoding, cls_token_id: int | None) -> QAWindow:
    sequence_ids = enc.sequence_ids
    word_ids = enc.word_ids
    offsets = tuple((int(a), int(b)) for a, b in enc.offsets)
    p_mask = tuple(
        seq != _CONTEXT and not (cls_token_id is not None and token == cls_token_id)
        for seq, token in zip(sequence_ids, enc.ids, strict=True)
    )
    # Characters of each context word, from its first to its last token in this window.
    words: dict[int, _Span] = {}
    for seq, word, (a, b) in zip(sequence_ids, word_ids, offsets, strict=True):
        if seq != _CONTEXT or word is None:
            continue
        known = words.get(word)
        words[word] = (a, b) if known is None else (known[0], b)
    # Like Encoding.token_to_word + word_to_chars(word, sequence_index=1): looked up by word index.
    word_spans = tuple(None if word is None else words.get(word) for word in word_ids)
    return QAWindow(
        ids=tuple(enc.ids),
        type_ids=tuple(enc.type_ids),
        p_mask=p_mask,
        offsets=offsets,
        word_spans=word_spans,
    )


_copies: dict[tuple[int, int | None, int], tuple[Tokenizer, Tokenizer]] = {}
_copies_lock = threading.Lock()
_MAX_COPIES = 32


def _copy(tokenizer: Tokenizer, max_length: int | None, stride: int) -> Tokenizer:
    """A private copy of the tokenizer without padding, truncating only the context to max_length
    with the given stride (no truncation when max_length is None). Cached per tokenizer object;
    the cache holds the original too, so its id cannot be reused while the entry lives."""
    key = (id(tokenizer), max_length, stride)
    with _copies_lock:
        entry = _copies.get(key)
    if entry is not None and entry[0] is tokenizer:
        return entry[1]
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_padding()
    if max_length is None:
        copy.no_truncation()
    else:
        copy.enable_truncation(max_length, stride=stride, strategy="only_second", direction="right")
    with _copies_lock:
        if len(_copies) >= _MAX_COPIES:
            del _copies[next(iter(_copies))]
        _copies[key] = (tokenizer, copy)
    return copy


# ---- scores ----------------------------------------------------------------------------------


def _probabilities(logits: npt.ArrayLike, window: QAWindow, name: str) -> _F32:
    """Softmax over the tokens that may be in an answer, in float32 as the pipeline computes it."""
    values = np.asarray(logits, dtype=np.float32)
    if values.shape != (window.length,):
        raise ValueError(f"{name} has shape {values.shape}; expected ({window.length},)")
    masked = np.where(np.asarray(window.p_mask, dtype=bool), MASKED_LOGIT, values)
    exp = np.exp(masked - masked.max())
    out: _F32 = exp / exp.sum()
    return out


def _top_spans(
    p_start: _F32, p_end: _F32, p_mask: Sequence[bool], count: int, max_answer_len: int
) -> list[tuple[int, int, float]]:
    """The window's best `count` (start, end, score) by the pipeline's selection (its
    `decode_spans`), best first: over the full [L, L] matrix of p_start[s] * p_end[e], zero
    outside s <= e < s + max_answer_len, then without spans that touch a token outside the
    context. The same numpy calls on the same float32 matrix, so that ties (score-0 entries)
    come out in the pipeline's order."""
    length = p_start.shape[0]
    scores = p_start[:, None] * p_end[None, :]
    width = np.arange(length)[None, :] - np.arange(length)[:, None]  # e - s
    scores[(width < 0) | (width >= max_answer_len)] = 0.0
    flat = scores.reshape(-1)
    if count == 1:
        order = np.array([np.argmax(flat)])
    elif flat.size <= count:
        # The pipeline sorts only when flat.size < count; at flat.size == count its argpartition
        # fails (kth out of bounds). Every entry, sorted, is what it would have chosen.
        order = np.argsort(-flat)
    else:
        chosen = np.argpartition(-flat, count)[:count]
        order = chosen[np.argsort(-flat[chosen])]
    spans = []
    for index in order.tolist():
        s, e = divmod(int(index), length)
        if not p_mask[s] and not p_mask[e]:
            spans.append((s, e, float(scores[s, e])))
    return spans


def _characters(window: QAWindow, s: int, e: int, align_to_words: bool) -> _Span:
    if align_to_words:
        first, last = window.word_spans[s], window.word_spans[e]
        if first is not None and last is not None:
            return first[0], last[1]
    return window.offsets[s][0], window.offsets[e][1]
