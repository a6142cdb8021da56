"""The texts `bertserve evaluate` scores: a Hub dataset (IMDB by default, with `datasets`, when the
Hub can be reached) or a local JSONL, CSV, Parquet or text file (one text a line), through
jobs/data.py, which fails fast in one line without a network."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bertserve.jobs import data

TEXT_SUFFIXES = (".txt", ".text")


@dataclass(frozen=True)
class Texts:
    """The rows to evaluate, in order: each text (None when null) and, in cloze mode, its label."""

    texts: list[str | None]
    labels: list[str | None] | None
    source: str


def load(source: str, split: str, text_column: str, label_column: str | None, limit: int | None) -> Texts:
    """The first `limit` rows (all when None) of `split` of `source`. Raises data.DataError."""
    if limit is not None and limit < 1:
        raise data.DataError(f"--limit must be at least 1, got {limit}")
    path = Path(source).expanduser()
    if path.suffix.lower() in TEXT_SUFFIXES:
        if label_column:
            raise data.DataError(f"{source}: a text file has no label column; use JSONL, CSV or Parquet")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise data.DataError(f"{source}: cannot read it: {exc.strerror}") from None
        rows: list[str | None] = [line for line in lines if line.strip()]
        return Texts(rows[:limit], None, str(path))
    splits = data.load_source(source)
    if split in splits:
        table = splits[split]
    elif len(splits) == 1:  # a single file: its rows, whatever --split says
        table = next(iter(splits.values()))
    else:
        raise data.DataError(
            f"{source} has no split {split!r}; it has {', '.join(splits)} (choose with --split)"
        )
    hints = {text_column: "--text-column", **({label_column: "--label-column"} if label_column else {})}
    data.require_columns(table, hints, source)
    table = data.limit_rows(data.select_columns(table, list(hints), source), limit)
    texts = [None if t is None else str(t) for t in table[text_column]]
    labels = None
    if label_column:
        labels = [None if v is None else str(v) for v in table[label_column]]
    where = source if path.exists() else f"{source} ({split})"
    return Texts(texts, labels, where)
