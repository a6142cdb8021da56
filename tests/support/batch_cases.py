"""Rows for `bertserve batch` tests: per task, good inputs and bad ones (empty, whitespace-only,
null, no mask), cycled over the rows, with an `id` and a `note` column to keep."""

from __future__ import annotations

from typing import Any

# task → (the input format its job test uses, good rows, bad rows)
CASES: dict[str, tuple[str, list[dict[str, Any]], list[dict[str, Any]]]] = {
    "fill-mask": (
        "jsonl",
        [{"text": "A [MASK] here."}, {"text": "The [MASK] sat on the [MASK]."}],
        [{"text": ""}, {"text": "no mask"}, {"text": None}, {"text": "  "}],
    ),
    "next-sentence": (
        "csv",
        [{"text": "Paris is in France.", "text_pair": "It is a city."}],
        [{"text": "A dog.", "text_pair": " "}, {"text": None, "text_pair": "B."}],
    ),
    "classify-sequence": (
        "parquet",
        [{"text": "Nice.", "text_pair": None}, {"text": "Good.", "text_pair": "Bad."}],
        [{"text": "", "text_pair": None}, {"text": None, "text_pair": "x"}],
    ),
    "classify-tokens": (
        "jsonl",
        [{"text": "Angela went to Paris."}],
        [{"text": "   "}, {"text": None}],
    ),
    "answer-question": (
        "csv",
        [{"question": "Where?", "context": "The tower is in Paris."}],
        [{"question": "Where?", "context": "   "}, {"question": None, "context": "x"}],
    ),
    "embed": (
        "parquet",
        [{"text": "some text"}, {"text": "more text here"}],
        [{"text": ""}, {"text": None}],
    ),
}


def rows(task: str, n: int) -> tuple[list[dict[str, Any]], list[bool]]:
    """n rows of the task's cases, and which of them are bad."""
    _, good, bad = CASES[task]
    pattern = [(r, False) for r in good] + [(r, True) for r in bad]
    out, flags = [], []
    for i in range(n):
        row, is_bad = pattern[i % len(pattern)]
        out.append({"id": i, **row, "note": f"n{i}"})
        flags.append(is_bad)
    return out, flags
