"""Which tokens `bertserve evaluate fill-mask` masks, and the masked text it sends.

Both modes work from the Tokenize RPC's answer for the text (server/tasks/tokenize.py in this
process, or the server's), so the in-process and `--server` runs mask exactly the same tokens.

- random: a "word" is a word of the tokenizer's pre-tokenizer (the tokens' `word` index). A text
  is first cut, at a word boundary, to the words that fit in `max_length` tokens; then
  max(1, round(rate x words)) of its words (rounded half up) are masked, every piece of a word
  replaced by one mask token, chosen by a generator seeded from (seed, row): the masks of a row
  do not depend on the other rows, the limit or how the data is split.
- cloze: the text holds one mask (`<mask>` or `[MASK]`, normalised to the checkpoint's mask
  token) and the label is the masked word, which must be one vocabulary entry.

The masked text is built from the tokens' character offsets (each masked word's characters
replaced by as many mask tokens as it has pieces), never by decoding ids, so that it
re-tokenises to the same pieces; a text for which it would not is skipped with that reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

CLOZE_MASKS = ("<mask>", "[MASK]")
"""Mask spellings a cloze text may use; each is replaced by the checkpoint's mask token."""


class Token(Protocol):
    """A token of the Tokenize RPC's answer (tokenize_pb2.Token)."""

    id: int
    token: str
    start: int
    end: int
    special: bool
    word: int

    def HasField(self, name: str) -> bool: ...


@dataclass(frozen=True)
class Mask:
    """One masked token: its index among the text's masks, its original id and piece, and its
    word (the word's text and piece count)."""

    position: int
    original_id: int
    original_token: str
    word: str
    pieces: int


@dataclass(frozen=True)
class Masked:
    """A text ready to score: the text sent to the model, its masks in order, every word of the
    (cut) text (for the corpus frequencies), and the ids the masked text must tokenize to."""

    row: int
    masked_text: str
    masks: tuple[Mask, ...]
    words: tuple[str, ...]
    expected_ids: tuple[int, ...]


@dataclass(frozen=True)
class Skipped:
    row: int
    reason: str


@dataclass(frozen=True)
class _Word:
    index: int  # the tokenizer's word index
    first: int  # first and last token (positions in the token list), inclusive
    last: int


def _words(tokens: Sequence[Token]) -> list[_Word]:
    """The words of the text, in order, each with its token range."""
    words: list[_Word] = []
    for position, token in enumerate(tokens):
        if token.special or not token.HasField("word"):
            continue
        if words and words[-1].index == token.word:
            words[-1] = _Word(token.word, words[-1].first, position)
        else:
            words.append(_Word(token.word, position, position))
    return words


def rounded(x: float) -> int:
    """Half up, as people round (Python's round() takes half to even)."""
    return int(np.floor(x + 0.5))


def mask_random(
    row: int,
    text: str,
    tokens: Sequence[Token],
    *,
    mask_token: str,
    mask_id: int,
    rate: float,
    seed: int,
    max_length: int,
) -> Masked | Skipped:
    """Mask a seeded `rate` of the words of `text` (`tokens`: its Tokenize answer, special
    tokens included), after cutting it to `max_length` tokens."""
    # The content tokens that fit beside the special ones; the last word must fit whole.
    content = [i for i, t in enumerate(tokens) if not t.special]
    room = max_length - (len(tokens) - len(content))
    words = _words(tokens)
    if len(content) > room:
        cut_at = content[room - 1] if room > 0 else -1
        words = [w for w in words if w.last <= cut_at]
    if not words:
        return Skipped(row, "no words")
    end = tokens[words[-1].last].end
    kept = text[:end]
    if mask_token in kept:
        return Skipped(row, "the text holds the mask token already")
    count = max(1, rounded(rate * len(words)))
    rng = np.random.default_rng([seed, row])
    chosen = sorted(int(i) for i in rng.choice(len(words), size=min(count, len(words)), replace=False))
    parts: list[str] = []
    masks: list[Mask] = []
    at = 0
    for i in chosen:
        word = words[i]
        start, stop = tokens[word.first].start, tokens[word.last].end
        parts += [kept[at:start], mask_token * (word.last - word.first + 1)]
        at = stop
        pieces = word.last - word.first + 1
        for p in range(word.first, word.last + 1):
            masks.append(Mask(len(masks), tokens[p].id, tokens[p].token, kept[start:stop], pieces))
    parts.append(kept[at:])
    all_words = tuple(kept[tokens[w.first].start : tokens[w.last].end] for w in words)
    masked = {p for i in chosen for p in range(words[i].first, words[i].last + 1)}
    last = words[-1].last
    trailing = [t.id for t in tokens[last + 1 :] if t.special]
    expected = (*(mask_id if p in masked else t.id for p, t in enumerate(tokens[: last + 1])), *trailing)
    return Masked(row, "".join(parts), tuple(masks), all_words, expected)


def cloze_text(text: str, mask_token: str) -> str:
    """The text with every spelling of the mask replaced by the checkpoint's mask token."""
    for spelling in CLOZE_MASKS:
        if spelling != mask_token:
            text = text.replace(spelling, mask_token)
    return text


def mask_cloze(
    row: int,
    text: str,
    tokens: Sequence[Token],
    label: str | None,
    label_tokens: Sequence[Token] | None,
    *,
    mask_id: int,
    max_length: int,
) -> Masked | Skipped:
    """A cloze row: `text` is already normalised (`cloze_text`) and `tokens` its Tokenize answer;
    `label_tokens` the label's (special tokens left out)."""
    masks = [t for t in tokens if t.id == mask_id]
    if len(masks) != 1:
        return Skipped(row, f"a cloze text needs one mask, this one has {len(masks)}")
    if len(tokens) > max_length:
        return Skipped(row, f"longer than --max-length ({len(tokens)} tokens)")
    if label is None or not label.strip():
        return Skipped(row, "no label")
    if label_tokens is None or len(label_tokens) != 1:
        pieces = 0 if label_tokens is None else len(label_tokens)
        return Skipped(row, f"the label is not one vocabulary entry ({pieces} pieces)")
    piece = label_tokens[0]
    words = tuple(text[t.start : t.end] for t in tokens if not t.special and t.id != mask_id)
    mask = Mask(0, piece.id, piece.token, label.strip(), 1)
    return Masked(row, text, (mask,), (*words, label.strip()), tuple(t.id for t in tokens))
