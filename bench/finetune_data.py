"""Generated datasets that a tiny BERT can learn, for `bertserve finetune` tests and benchmarks.

Each task has a rule a small model picks up in a few hundred steps, written as JSON lines:
- text-classification: the label is set by one cue word somewhere among filler words;
- token-classification: person names (made-up, several word pieces each) and place names from
  lists, tagged B-/I- in IOB2, among filler words;
- question-answering: the answer is the word after a fixed cue phrase in the context, asked about
  by a fixed question; answers in SQuAD's {"text": [...], "answer_start": [...]} shape.
Every word but the made-up names is in the tiny vocabulary of bertserve.workers.tiny_bert.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

FILLER = (
    "the of and to a in is was he for it with as his on be at by this had not are but from or have an they "
    "which one you were her all she there would their we him been has when who will more no if out so said "
    "what up its about into than them can only other new some could time these two may then do first any my"
).split()
EMOTION_CUES = {
    "sadness": "river",
    "joy": "music",
    "love": "family",
    "anger": "war",
    "fear": "mountain",
    "surprise": "film",
}
PERSONS = (
    ("Maria",),
    ("Jan", "Kowalski"),
    ("Ada", "Lovelace"),
    ("Omar",),
    ("Lena", "Berg"),
    ("Yuki", "Tanaka"),
    ("Pablo",),
    ("Grace", "Hopper", "Jones"),
)
PLACES = (
    ("Paris",),
    ("London",),
    ("Berlin",),
    ("Rome",),
    ("Madrid",),
    ("Tokyo",),
    ("São", "Paulo"),
    ("Zürich",),
)
NER_LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
QA_CUE = "the capital city is"
QA_QUESTION = "what is the capital city ?"
QA_ANSWERS = ("Paris", "London", "Berlin", "Rome", "Madrid", "Tokyo", "Canada", "Europe", "Spain", "Italy")


def _filler(rng: random.Random, low: int, high: int) -> list[str]:
    return [rng.choice(FILLER) for _ in range(rng.randint(low, high))]


def classification_rows(n: int, seed: int = 0, length: tuple[int, int] = (4, 12)) -> list[dict[str, Any]]:
    """{"text": ..., "label": "joy"}: the cue word of the label among `length` (low, high) filler words."""
    rng = random.Random(seed)
    labels = list(EMOTION_CUES)
    rows = []
    for _ in range(n):
        label = rng.choice(labels)
        words = _filler(rng, *length)
        words.insert(rng.randint(0, len(words)), EMOTION_CUES[label])
        rows.append({"text": " ".join(words), "label": label})
    return rows


def ner_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """{"tokens": [...], "ner_tags": ["O", "B-PER", ...]}: one or two names among filler words."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        tokens: list[str] = []
        tags: list[str] = []
        for _ in range(rng.randint(1, 2)):
            words = _filler(rng, 1, 5)
            tokens += words
            tags += ["O"] * len(words)
            kind, names = rng.choice((("PER", PERSONS), ("LOC", PLACES)))
            name = rng.choice(names)
            tokens += list(name)
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(name) - 1)
        words = _filler(rng, 0, 4)
        tokens += words
        tags += ["O"] * len(words)
        rows.append({"tokens": tokens, "ner_tags": tags})
    return rows


def qa_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """{"question", "context", "answers": {"text": [w], "answer_start": [i]}}: the word after the cue."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        answer = rng.choice(QA_ANSWERS)
        before = " ".join(_filler(rng, 3, 14))
        after = " ".join(_filler(rng, 2, 10))
        prefix = f"{before} {QA_CUE} "
        context = f"{prefix}{answer} {after} ."
        rows.append(
            {
                "id": str(i),
                "question": QA_QUESTION,
                "context": context,
                "answers": {"text": [answer], "answer_start": [len(prefix)]},
            }
        )
    return rows


GENERATORS = {
    "text-classification": classification_rows,
    "token-classification": ner_rows,
    "question-answering": qa_rows,
}


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def write_splits(folder: Path, task: str, train: int, validation: int, test: int = 0, seed: int = 0) -> Path:
    """train.jsonl, validation.jsonl (and test.jsonl) for the task in folder, with distinct seeds."""
    make = GENERATORS[task]
    write_jsonl(folder / "train.jsonl", make(train, seed))
    write_jsonl(folder / "validation.jsonl", make(validation, seed + 1))
    if test:
        write_jsonl(folder / "test.jsonl", make(test, seed + 2))
    return folder
