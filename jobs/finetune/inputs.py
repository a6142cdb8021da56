"""From the user's data to clean per-task tables, on the driver, before any worker starts.

Each split keeps only the task's columns under fixed names, with labels as ids:
  text-classification   text, [text_pair], label
  token-classification  tokens, tags
  question-answering    question, context, answer_texts, answer_starts
so that bad data fails here with one line (missing column, unknown label, malformed answers)
rather than inside a Ray worker.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bertserve.jobs import data
from bertserve.jobs.data import DataError
from bertserve.jobs.finetune import labels as labels_mod
from bertserve.jobs.finetune.recipes import (
    QUESTION_ANSWERING,
    TEXT_CLASSIFICATION,
    TOKEN_CLASSIFICATION,
    VALIDATION_FRACTION,
    JobConfig,
)

if TYPE_CHECKING:
    import datasets

    Splits = Mapping[str, datasets.Dataset | None]
    """The loaded tables by split name (train, validation, test; test may be None), unchecked."""
    Converted = tuple[dict[str, datasets.Dataset], tuple[str, ...] | None]
    """The task's clean tables by split (no test when there is none), and its label names (id ->
    name; None for question answering)."""


@dataclass(frozen=True)
class JobData:
    train: datasets.Dataset
    validation: datasets.Dataset
    test: datasets.Dataset | None
    label_names: tuple[str, ...] | None
    """id -> name; None for question answering."""
    notes: tuple[str, ...] = ()
    """Things the user should know (a validation split carved out of train)."""


def load(config: JobConfig) -> JobData:
    files = {"train": config.train_file, "validation": config.validation_file, "test": config.test_file}
    splits = data.load_splits(config.data, files)
    if "train" not in splits:
        have = ", ".join(sorted(splits)) or "none"
        raise DataError(f"the data has no train split (it has: {have}); give one with --train-file")
    notes: list[str] = []
    train = splits["train"]
    validation = splits.get("validation")
    if validation is None:
        if len(train) < 2:
            raise DataError("the data has no validation split and too few training rows to hold some out")
        parts = train.train_test_split(test_size=VALIDATION_FRACTION, seed=config.seed, shuffle=True)
        train, validation = parts["train"], parts["test"]
        notes.append(
            f"no validation split: holding out {len(validation)} of the training rows "
            f"({VALIDATION_FRACTION:.0%})"
        )
    test = splits.get("test") if (config.test_file or config.data) else None
    if config.test_file is None and test is not None and not _has_labels(test, config):
        test = None  # Hub test splits without labels (e.g. GLUE) cannot be scored
    train = data.limit_rows(train, config.limit_train)
    validation = data.limit_rows(validation, config.limit_eval)
    if test is not None:
        test = data.limit_rows(test, config.limit_eval)

    convert = _CONVERTERS.get(config.task)
    if convert is None:
        raise DataError(f"unknown task {config.task!r}")
    tables, names = convert(config, {"train": train, "validation": validation, "test": test})
    return JobData(tables["train"], tables["validation"], tables.get("test"), names, tuple(notes))


def _has_labels(table: datasets.Dataset, config: JobConfig) -> bool:
    column = {
        TEXT_CLASSIFICATION: config.columns.label,
        TOKEN_CLASSIFICATION: config.columns.tags,
        QUESTION_ANSWERING: config.columns.answers,
    }[config.task]
    if column not in table.column_names:
        return False
    if config.task == TEXT_CLASSIFICATION:
        return any(v is not None and v != -1 for v in table[column][:100])
    return True


def _check(splits: Splits, wanted: Mapping[str, str | None]) -> dict[str, datasets.Dataset]:
    out = {}
    for name, table in splits.items():
        if table is not None:
            data.require_columns(table, wanted, f"the {name} data")
            out[name] = table
    return out


# ---- text classification -------------------------------------------------------------------


def _classification(config: JobConfig, splits: Splits) -> Converted:
    c = config.columns
    wanted = {c.text: "--text-column", c.label: "--label-column"}
    if c.text_pair:
        wanted[c.text_pair] = "--text-pair-column"
    tables = _check(splits, wanted)
    train = tables["train"]
    names = labels_mod.label_names(
        train[c.label], config.label_names, labels_mod.class_label_names(train.features[c.label]), c.label
    )
    ids = labels_mod.encoder(names)

    def convert(name: str, table: datasets.Dataset) -> datasets.Dataset:
        rows: dict[str, list[Any]] = {"text": _texts(table[c.text], name, c.text), "label": []}
        if c.text_pair:
            rows["text_pair"] = _texts(table[c.text_pair], name, c.text_pair)
        for value in table[c.label]:
            rows["label"].append(_label_id(value, ids, len(names), name, c.label))
        return _table(rows)

    return {name: convert(name, table) for name, table in tables.items()}, names


# ---- token classification ------------------------------------------------------------------


def _tokens(config: JobConfig, splits: Splits) -> Converted:
    c = config.columns
    tables = _check(splits, {c.tokens: "--tokens-column", c.tags: "--tags-column"})
    train = tables["train"]
    flat = [tag for tags in train[c.tags] if tags for tag in tags]
    names = labels_mod.label_names(
        flat, config.label_names, labels_mod.class_label_names(train.features[c.tags]), c.tags
    )
    ids = labels_mod.encoder(names)

    def convert(name: str, table: datasets.Dataset) -> datasets.Dataset:
        rows: dict[str, list[Any]] = {"tokens": [], "tags": []}
        for i, (tokens, tags) in enumerate(zip(table[c.tokens], table[c.tags], strict=True)):
            if not isinstance(tokens, list) or not isinstance(tags, list):
                raise DataError(f"the {name} data, row {i}: {c.tokens!r} and {c.tags!r} must be lists")
            if len(tokens) != len(tags):
                raise DataError(
                    f"the {name} data, row {i}: {len(tokens)} tokens but {len(tags)} tags "
                    f"in {c.tokens!r} and {c.tags!r}"
                )
            rows["tokens"].append([str(t) for t in tokens])
            rows["tags"].append([_label_id(t, ids, len(names), name, c.tags) for t in tags])
        return _table(rows)

    return {name: convert(name, table) for name, table in tables.items()}, names


# ---- question answering --------------------------------------------------------------------


def _qa(config: JobConfig, splits: Splits) -> Converted:
    c = config.columns
    tables = _check(
        splits,
        {c.question: "--question-column", c.context: "--context-column", c.answers: "--answers-column"},
    )

    def convert(name: str, table: datasets.Dataset) -> datasets.Dataset:
        rows: dict[str, list[Any]] = {"question": [], "context": [], "answer_texts": [], "answer_starts": []}
        columns = zip(table[c.question], table[c.context], table[c.answers], strict=True)
        for i, (question, context, answers) in enumerate(columns):
            if not isinstance(question, str) or not isinstance(context, str) or not question or not context:
                raise DataError(f"the {name} data, row {i}: question and context must be non-empty text")
            texts, starts = parse_answers(answers, context, f"the {name} data, row {i}")
            rows["question"].append(question)
            rows["context"].append(context)
            rows["answer_texts"].append(texts)
            rows["answer_starts"].append(starts)
        return _table(rows)

    return {name: convert(name, table) for name, table in tables.items()}, None


def parse_answers(answers: Any, context: str, where: str) -> tuple[list[str], list[int]]:
    """SQuAD's {"text": [...], "answer_start": [...]} (a single text and start also accepted, and
    a list of {"text", "answer_start"} objects); every answer must be found at its start."""
    if isinstance(answers, list):  # [{"text": ..., "answer_start": ...}, ...]
        if not all(isinstance(a, dict) for a in answers):
            raise DataError(f"{where}: answers must be an object with 'text' and 'answer_start'")
        texts: Any = [a.get("text") for a in answers]
        starts: Any = [a.get("answer_start") for a in answers]
    elif isinstance(answers, dict):
        texts, starts = answers.get("text"), answers.get("answer_start")
    else:
        raise DataError(f"{where}: answers must be an object with 'text' and 'answer_start'")
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(starts, int):
        starts = [starts]
    if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
        raise DataError(f"{where}: answers need as many 'answer_start' values as 'text' values")
    for text, start in zip(texts, starts, strict=True):
        if not isinstance(text, str) or not isinstance(start, int) or isinstance(start, bool):
            raise DataError(f"{where}: answer texts must be strings and answer_start integers")
        if context[start : start + len(text)] != text:
            raise DataError(f"{where}: an answer is not found in the context at its answer_start")
    return list(texts), list(starts)


_CONVERTERS: dict[str, Callable[[JobConfig, Splits], Converted]] = {
    TEXT_CLASSIFICATION: _classification,
    TOKEN_CLASSIFICATION: _tokens,
    QUESTION_ANSWERING: _qa,
}
"""Per task: check the splits' columns, read the label names from train, and convert each split."""


# ---- helpers -------------------------------------------------------------------------------


def _texts(values: list[Any], split: str, column: str) -> list[str]:
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise DataError(f"the {split} data, row {i}: column {column!r} must be text")
    return list(values)


def _label_id(value: Any, ids: dict[Any, int], count: int, split: str, column: str) -> int:
    if isinstance(value, str):
        if value not in ids:
            raise DataError(
                f"the {split} data has label {value!r} in {column!r}, not among the training labels"
            )
        return ids[value]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < count:
        return value
    raise DataError(f"the {split} data has label {value!r} in {column!r}; expected one of {count} labels")


def _table(rows: dict[str, list[Any]]) -> datasets.Dataset:
    import datasets

    return datasets.Dataset.from_dict(rows)
