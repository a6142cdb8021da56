"""Token classification (NER): windowing before the model and decoding after it, numpy only.

`plan` tokenizes a text once and cuts it into overlapping windows that fit the model; the replicas
return raw logits per window; `decode` merges the windows back into one score matrix for the whole
text and reproduces the Hugging Face `token-classification` pipeline: float32 softmax, special
tokens skipped, sub-words found by comparing token and text lengths, and the none / simple /
first / average / max aggregation strategies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from tokenizers import Encoding, Tokenizer

AGGREGATIONS = ("none", "simple", "first", "average", "max")

FloatMatrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Entity:
    """One result, as the pipeline reports it.

    label: the pipeline's "entity" (aggregation none, e.g. "B-PER") or "entity_group" (e.g. "PER").
    start, end: character offsets into the text. index: the token's position in the text's token
    sequence, [CLS] included (the pipeline's "index"); -1 for aggregated entities.
    """

    label: str
    score: float
    word: str
    start: int
    end: int
    index: int


@dataclass(frozen=True)
class Window:
    """One model input. Window position p holds text token `first + p - lead` for
    lead <= p < lead + count; the other positions are the special tokens around them."""

    ids: tuple[int, ...]
    type_ids: tuple[int, ...]
    first: int
    lead: int
    count: int

    def text_position(self, p: int) -> int:
        """The position in the whole text's token sequence of window position p (a text token)."""
        return self.first + p - self.lead


@dataclass(frozen=True)
class NerPlan:
    """A tokenized text, its windows, and which window each token's scores come from.

    ids, offsets, special_mask: the whole text's encoding (special tokens included).
    sources[i]: (window, position in that window) that token i takes its logits from.
    """

    text: str
    windows: tuple[Window, ...]
    ids: tuple[int, ...]
    offsets: tuple[tuple[int, int], ...]
    special_mask: tuple[int, ...]
    sources: tuple[tuple[int, int], ...]
    stride: int

    @property
    def num_tokens(self) -> int:
        """Tokens of the whole text, special tokens included."""
        return len(self.ids)


def default_stride(max_length: int) -> int:
    """A quarter of the window (max_length // 4): every token near a cut keeps at least an eighth
    of a window of context on both sides, for about a third more model work."""
    return max_length // 4


def plan(text: str, tokenizer: Tokenizer, max_length: int, stride: int | None = None) -> NerPlan:
    """Tokenize `text` once (the tokenizer must have truncation and padding off) and cut it into
    windows of at most max_length tokens, special tokens included, consecutive windows sharing
    `stride` text tokens (default: `default_stride(max_length)`). A text that fits gives one
    window: exactly the pipeline's model input. Raises ValueError for impossible lengths."""
    if tokenizer.truncation is not None or tokenizer.padding is not None:
        raise ValueError("the tokenizer must have truncation and padding disabled")
    enc: Encoding = tokenizer.encode(text, add_special_tokens=True)
    ids = tuple(enc.ids)
    type_ids = tuple(enc.type_ids)
    n = len(ids)
    in_text = [i for i, s in enumerate(enc.sequence_ids) if s is not None]
    lead = in_text[0] if in_text else n
    trail = n - 1 - in_text[-1] if in_text else 0
    capacity = max_length - lead - trail
    if capacity < 1:
        raise ValueError(
            f"max_length must leave room for at least one token besides {lead + trail} special ones"
        )
    if stride is None:
        stride = min(default_stride(max_length), capacity - 1)
    if not 0 <= stride < capacity:
        raise ValueError(f"stride must be between 0 and {capacity - 1} for max_length {max_length}")
    count = n - lead - trail
    if n <= max_length:
        spans = [(lead, count)]
    else:
        step = capacity - stride
        spans = []
        first = lead
        while True:
            size = min(capacity, lead + count - first)
            spans.append((first, size))
            if first + size >= lead + count:
                break
            first += step
    windows = tuple(
        Window(
            ids=ids[:lead] + ids[first : first + size] + ids[n - trail :],
            type_ids=type_ids[:lead] + type_ids[first : first + size] + type_ids[n - trail :],
            first=first,
            lead=lead,
            count=size,
        )
        for first, size in spans
    )
    return NerPlan(
        text=text,
        windows=windows,
        ids=ids,
        offsets=tuple((int(a), int(b)) for a, b in enc.offsets),
        special_mask=tuple(enc.special_tokens_mask),
        sources=_sources(windows, n, lead, lead + count),
        stride=stride,
    )


def _sources(windows: tuple[Window, ...], n: int, begin: int, end: int) -> tuple[tuple[int, int], ...]:
    """For each token, the window where it has the most context on its poorer side. A window side
    that is the text's own beginning or end cuts nothing, so it does not count as an edge; ties go to
    the earlier window. Leading special tokens come from the first window, trailing ones from the last."""
    last = len(windows) - 1
    out: list[tuple[int, int]] = [(0, p) for p in range(begin)]
    best: list[tuple[float, int, int]] = [(-1.0, 0, 0)] * (end - begin)
    for w, win in enumerate(windows):
        cut_left = win.first > begin
        cut_right = win.first + win.count < end
        for k in range(win.count):
            left = k if cut_left else math.inf
            right = win.count - 1 - k if cut_right else math.inf
            margin = min(left, right)
            slot = win.first + k - begin
            if margin > best[slot][0]:
                best[slot] = (margin, w, win.lead + k)
    out.extend((w, p) for _, w, p in best)
    tail = windows[last]
    out.extend((last, tail.lead + tail.count + i) for i in range(n - end))
    return tuple(out)


def merge_logits(plan: NerPlan, window_logits: Sequence[npt.ArrayLike]) -> FloatMatrix:
    """One float32 [num_tokens, num_labels] logit matrix for the whole text, each row taken from
    the token's source window. Raises ValueError when the shapes do not match the plan."""
    if len(window_logits) != len(plan.windows):
        raise ValueError(f"expected logits for {len(plan.windows)} windows, got {len(window_logits)}")
    arrays = [np.asarray(x, dtype=np.float32) for x in window_logits]
    num_labels = arrays[0].shape[-1] if arrays and arrays[0].ndim == 2 else 0
    for win, arr in zip(plan.windows, arrays, strict=True):
        if arr.shape != (len(win.ids), num_labels) or num_labels == 0:
            raise ValueError("window logits must be [window length, num_labels] with the same num_labels")
    merged = np.empty((plan.num_tokens, num_labels), dtype=np.float32)
    source = np.array(plan.sources, dtype=np.int64).reshape(-1, 2)
    for w, arr in enumerate(arrays):
        rows = np.flatnonzero(source[:, 0] == w)
        merged[rows] = arr[source[rows, 1]]
    return merged


def softmax(logits: FloatMatrix) -> FloatMatrix:
    """Row-wise softmax in float32, as the pipeline computes it (max subtracted first)."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs: FloatMatrix = shifted / shifted.sum(axis=-1, keepdims=True)
    return probs


@dataclass(frozen=True)
class _Token:
    """A non-special token with its probabilities: the pipeline's "pre-entity"."""

    word: str
    scores: FloatMatrix
    start: int
    end: int
    index: int
    is_subword: bool


@dataclass(frozen=True)
class _Tagged:
    """A token or word with its chosen label, before grouping."""

    label: str
    score: np.float32
    word: str
    start: int
    end: int


def decode(
    plan: NerPlan,
    window_logits: Sequence[npt.ArrayLike],
    id2label: Mapping[int, str],
    aggregation: str,
    ignore_labels: Sequence[str],
    tokenizer: Tokenizer,
) -> list[Entity]:
    """Entities of the text from the raw logits of each window (window_logits[i] is
    [len(windows[i].ids), num_labels]), equal to the pipeline's output for the same checkpoint.
    Raises ValueError for an unknown aggregation strategy or logits that do not fit the plan."""
    strategy = aggregation.lower()
    if strategy not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation strategy; choose one of {', '.join(AGGREGATIONS)}")
    scores = softmax(merge_logits(plan, window_logits))
    if scores.shape[1] != len(id2label):
        raise ValueError(f"the model gave {scores.shape[1]} labels but id2label has {len(id2label)}")
    tokens = _tokens(plan, scores, tokenizer)
    ignored = set(ignore_labels)
    if strategy == "none":
        out = []
        for tok in tokens:
            best = int(tok.scores.argmax())
            label = id2label[best]
            if label not in ignored:
                out.append(Entity(label, float(tok.scores[best]), tok.word, tok.start, tok.end, tok.index))
        return out
    if strategy == "simple":
        tagged = [_tag(tok.scores, tok.word, tok.start, tok.end, id2label) for tok in tokens]
    else:
        tagged = [_word(group, strategy, id2label, tokenizer) for group in _words(tokens)]
    return [entity for entity in _group(tagged, tokenizer) if entity.label not in ignored]


def _tokens(plan: NerPlan, scores: FloatMatrix, tokenizer: Tokenizer) -> list[_Token]:
    """Non-special tokens with their word, offsets and sub-word flag, as the pipeline gathers them.

    With a word-aware model (WordPiece's "##" prefix) a token is a sub-word when its string and its
    text slice differ in length; otherwise the pipeline's fallback applies (no space before the
    token). An unknown token takes its text slice as word and is never a sub-word.
    """
    model = tokenizer.model
    word_aware = bool(getattr(model, "continuing_subword_prefix", None))
    unk_token = getattr(model, "unk_token", None)
    unk_id = tokenizer.token_to_id(unk_token) if isinstance(unk_token, str) else None
    text = plan.text
    out = []
    for i, token_id in enumerate(plan.ids):
        if plan.special_mask[i]:
            continue
        start, end = plan.offsets[i]
        word = tokenizer.id_to_token(token_id) or ""
        ref = text[start:end]
        if word_aware:
            is_subword = len(word) != len(ref)
        else:
            is_subword = start > 0 and " " not in text[start - 1 : start + 1]
        if token_id == unk_id:
            word = ref
            is_subword = False
        out.append(_Token(word, scores[i], start, end, i, is_subword))
    return out


def _tag(scores: FloatMatrix, word: str, start: int, end: int, id2label: Mapping[int, str]) -> _Tagged:
    best = int(scores.argmax())
    return _Tagged(id2label[best], scores[best], word, start, end)


def _words(tokens: list[_Token]) -> list[list[_Token]]:
    """Tokens grouped into words: a sub-word joins the word before it."""
    words: list[list[_Token]] = []
    for tok in tokens:
        if words and tok.is_subword:
            words[-1].append(tok)
        else:
            words.append([tok])
    return words


def _word(group: list[_Token], strategy: str, id2label: Mapping[int, str], tokenizer: Tokenizer) -> _Tagged:
    """One label for a whole word: its first token's (first), the most confident token's (max),
    or the best label of the token probabilities averaged per label (average)."""
    word = _join([tok.word for tok in group], tokenizer)
    if strategy == "first":
        scores = group[0].scores
    elif strategy == "max":
        scores = max(group, key=lambda tok: tok.scores.max()).scores
    else:
        scores = np.nanmean(np.stack([tok.scores for tok in group]), axis=0)
    return _tag(scores, word, group[0].start, group[-1].end, id2label)


def _split_tag(label: str) -> tuple[str, str]:
    """("B" | "I", entity type). A label without a B-/I- prefix counts as a continuation."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


def _group(tagged: list[_Tagged], tokenizer: Tokenizer) -> list[Entity]:
    """Adjacent tokens or words of the same type form one entity unless the next one is a B- tag.
    The entity's type is its first member's label after the first "-", its score the mean score."""
    groups: list[list[_Tagged]] = []
    for item in tagged:
        if groups:
            bi, kind = _split_tag(item.label)
            _, last_kind = _split_tag(groups[-1][-1].label)
            if kind == last_kind and bi != "B":
                groups[-1].append(item)
                continue
        groups.append([item])
    return [
        Entity(
            label=g[0].label.split("-", 1)[-1],
            score=float(np.nanmean(np.array([x.score for x in g], dtype=np.float32))),
            word=_join([x.word for x in g], tokenizer),
            start=g[0].start,
            end=g[-1].end,
            index=-1,
        )
        for g in groups
    ]


def _join(tokens: list[str], tokenizer: Tokenizer) -> str:
    """The tokenizer's convert_tokens_to_string: the backend decoder (for WordPiece: "##" pieces
    glued, others joined by spaces, spaces before punctuation cleaned up), else a space join."""
    decoder = tokenizer.decoder
    if decoder is None:
        return " ".join(tokens)
    joined: str = decoder.decode(tokens)
    return joined
