"""The tasks' usual metrics, as fractions in [0, 1]. No `evaluate`, `seqeval` or scikit-learn.

- Classification: accuracy, and macro-F1 over the labels seen in the references or the
  predictions (scikit-learn's `f1_score(average="macro")`, with 0 for a label never predicted).
- Token classification: entity-level precision, recall and F1 with the chunking of CoNLL's
  conlleval script, which reads IOB1, IOB2 and IOBES tags and gives ill-formed sequences a
  meaning (an I- after O or after another type starts an entity). A chunk counts as correct
  when its type, first and last token all match. Each sentence is chunked on its own.
- Extractive QA: SQuAD exact match and F1 with the official answer normalisation (lower case,
  no punctuation, no articles a/an/the, single spaces), the best over the gold answers.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence

# ---- classification ------------------------------------------------------------------------


def accuracy(predictions: Sequence[Hashable], references: Sequence[Hashable]) -> float:
    _same_length(predictions, references)
    if not references:
        return 0.0
    return sum(p == r for p, r in zip(predictions, references, strict=True)) / len(references)


def macro_f1(predictions: Sequence[Hashable], references: Sequence[Hashable]) -> float:
    """The unweighted mean of each label's F1, over the labels in either sequence."""
    _same_length(predictions, references)
    labels = set(predictions) | set(references)
    if not labels:
        return 0.0
    total = 0.0
    for label in labels:
        tp = sum(p == label and r == label for p, r in zip(predictions, references, strict=True))
        predicted = sum(p == label for p in predictions)
        actual = sum(r == label for r in references)
        total += _f1(tp, predicted, actual)
    return total / len(labels)


# ---- entities (conlleval) ------------------------------------------------------------------

Chunk = tuple[str, int, int]
"""(entity type, first token, one past the last token)."""


def split_tag(tag: str) -> tuple[str, str]:
    """conlleval's split: "B-PER" -> ("B", "PER"); "O" -> ("O", ""); the prefix ends at the first '-'."""
    prefix, dash, kind = tag.partition("-")
    return (prefix, kind) if dash else (tag, "")


def _ends(prev_tag: str, tag: str, prev_type: str, kind: str) -> bool:
    """conlleval's endOfChunk: does a chunk end between the previous token and this one?"""
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag not in ("O", ".") and prev_type != kind


def _starts(prev_tag: str, tag: str, prev_type: str, kind: str) -> bool:
    """conlleval's startOfChunk: does a chunk start at this token?"""
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag not in ("O", ".") and prev_type != kind


def chunks(tags: Sequence[str]) -> set[Chunk]:
    """The entities of one sentence's tags, as conlleval finds them."""
    found: set[Chunk] = set()
    prev_tag, prev_type, start = "O", "", -1
    for i, raw in enumerate([*tags, "O"]):  # the sentence boundary closes any open chunk
        tag, kind = split_tag(raw)
        if start >= 0 and _ends(prev_tag, tag, prev_type, kind):
            found.add((prev_type, start, i))
            start = -1
        if _starts(prev_tag, tag, prev_type, kind):
            start = i
        prev_tag, prev_type = tag, kind
    return found


def entity_scores(
    predictions: Iterable[Sequence[str]], references: Iterable[Sequence[str]]
) -> dict[str, float]:
    """Micro precision, recall and F1 over the entities of all sentences, and token accuracy."""
    correct = predicted = actual = tokens = same_tokens = 0
    for pred, ref in zip(predictions, references, strict=True):
        _same_length(pred, ref)
        pred_chunks, ref_chunks = chunks(pred), chunks(ref)
        correct += len(pred_chunks & ref_chunks)
        predicted += len(pred_chunks)
        actual += len(ref_chunks)
        tokens += len(ref)
        same_tokens += sum(p == r for p, r in zip(pred, ref, strict=True))
    return {
        "precision": correct / predicted if predicted else 0.0,
        "recall": correct / actual if actual else 0.0,
        "f1": _f1(correct, predicted, actual),
        "accuracy": same_tokens / tokens if tokens else 0.0,
    }


# ---- SQuAD ---------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """The official SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the prediction equals one of the gold answers after normalisation."""
    golds = golds or [""]  # no answer (SQuAD v2): only the empty prediction matches
    return float(any(normalize_answer(prediction) == normalize_answer(g) for g in golds))


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    """The best bag-of-words F1 of the normalised prediction against a gold answer."""
    return max(_token_f1(prediction, gold) for gold in (golds or [""]))


def _token_f1(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:  # SQuAD v2's rule; v1.1 has no empty gold answers
        return float(pred_tokens == gold_tokens)
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    return _f1(same, len(pred_tokens), len(gold_tokens))


def squad_scores(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean exact match and F1 over the questions, as fractions (the official script prints x100)."""
    _same_length(predictions, golds)
    if not predictions:
        return {"exact_match": 0.0, "f1": 0.0}
    n = len(predictions)
    return {
        "exact_match": sum(exact_match(p, g) for p, g in zip(predictions, golds, strict=True)) / n,
        "f1": sum(token_f1(p, g) for p, g in zip(predictions, golds, strict=True)) / n,
    }


# ---- helpers -------------------------------------------------------------------------------


def _f1(correct: int, predicted: int, actual: int) -> float:
    if correct == 0:
        return 0.0
    precision, recall = correct / predicted, correct / actual
    return 2 * precision * recall / (precision + recall)


def _same_length(a: Sequence[object], b: Sequence[object]) -> None:
    if len(a) != len(b):
        raise ValueError(f"{len(a)} predictions for {len(b)} references")
