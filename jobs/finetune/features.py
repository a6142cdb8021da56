"""Model inputs for each task, from the clean tables of `inputs` and the base model's tokenizer.

- Classification: text (and text_pair) truncated to max_length, the label as `labels`.
- Token classification: words tokenized as split words; each word's first piece carries its
  tag, every other piece and special token -100 (ignored by the loss and the metric).
- QA training: (question, context) windows of max_length tokens overlapping by doc_stride
  context tokens, as run_qa makes them; a window without the whole (first) answer points at
  [CLS]. QA evaluation: the windows the server makes for AnswerQuestion
  (`bertserve.server.tasks.answer_question_windows.plan` with the server's window and stride for
  this model), so that the score is what a caller gets.
No padding here: batches are padded by the collator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bertserve.server.tasks import answer_question_windows as qa

if TYPE_CHECKING:
    import datasets

IGNORE = -100
"""The label of tokens the loss and the metrics skip."""


def classification(table: datasets.Dataset, tokenizer: Any, max_length: int) -> datasets.Dataset:
    pairs = "text_pair" in table.column_names

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        enc = tokenizer(
            batch["text"], batch["text_pair"] if pairs else None, truncation=True, max_length=max_length
        )
        return {**enc, "labels": batch["label"]}

    return _encoded(table, encode)


def token_classification(table: datasets.Dataset, tokenizer: Any, max_length: int) -> datasets.Dataset:
    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        enc = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=max_length)
        enc["labels"] = [first_piece_labels(enc.word_ids(i), tags) for i, tags in enumerate(batch["tags"])]
        return dict(enc)

    return _encoded(table, encode)


def first_piece_labels(word_ids: Sequence[int | None], tags: Sequence[int]) -> list[int]:
    """Each word's tag on its first piece; -100 on later pieces and special tokens."""
    out, previous = [], None
    for word in word_ids:
        out.append(IGNORE if word is None or word == previous else tags[word])
        previous = word
    return out


def answer_positions(
    offsets: Sequence[tuple[int, int]], in_context: Sequence[bool], start: int, end: int, cls_index: int
) -> tuple[int, int]:
    """First and last token of the answer characters [start, end) among the context tokens of a
    window; (cls_index, cls_index) when the window does not hold the whole answer."""
    context = [t for t, inside in enumerate(in_context) if inside]
    if not context or offsets[context[0]][0] > start or offsets[context[-1]][1] < end:
        return cls_index, cls_index
    first = max(t for t in context if offsets[t][0] <= start)
    last = min(t for t in context if offsets[t][1] >= end)
    return first, max(first, last)


def qa_training(
    table: datasets.Dataset, tokenizer: Any, max_length: int, doc_stride: int
) -> datasets.Dataset:
    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        enc = tokenizer(
            [q.lstrip() for q in batch["question"]],
            batch["context"],
            truncation="only_second",
            max_length=max_length,
            stride=doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        samples = enc.pop("overflow_to_sample_mapping")
        offsets = enc.pop("offset_mapping")
        starts, ends = [], []
        for i, window_offsets in enumerate(offsets):
            sequence_ids = enc.sequence_ids(i)
            ids = enc["input_ids"][i]
            cls_index = ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in ids else 0
            row = samples[i]
            texts, answer_starts = batch["answer_texts"][row], batch["answer_starts"][row]
            if not texts:  # no answer (SQuAD v2 style): point at [CLS]
                starts.append(cls_index)
                ends.append(cls_index)
                continue
            first, last = answer_positions(
                window_offsets,
                [s == 1 for s in sequence_ids],
                answer_starts[0],
                answer_starts[0] + len(texts[0]),
                cls_index,
            )
            starts.append(first)
            ends.append(last)
        enc["start_positions"] = starts
        enc["end_positions"] = ends
        return dict(enc)

    return _encoded(table, encode)


def _encoded(table: datasets.Dataset, encode: Any) -> datasets.Dataset:
    """encode(all the rows as columns) as a new in-memory table. Not Dataset.map: it hashes the
    function for its cache (nothing to cache here), slowly and, under Ray, noisily."""
    import datasets

    return datasets.Dataset.from_dict(encode(table.to_dict()))


@dataclass(frozen=True)
class QAEvalSet:
    """The server's windows for each question, flattened into model inputs, and how to map the
    windows' logits back to questions."""

    features: datasets.Dataset
    plans: tuple[qa.QAPlan | None, ...]
    """Per question; None when the server would reject it (then it scores as a wrong answer)."""
    golds: tuple[tuple[str, ...], ...]
    window_counts: tuple[int, ...]


def qa_evaluation(table: datasets.Dataset, tokenizer: Any, max_position_embeddings: int) -> QAEvalSet:
    import datasets

    backend = tokenizer.backend_tokenizer
    max_length = qa.default_max_length(max_position_embeddings)
    rows: dict[str, list[Any]] = {
        "input_ids": [],
        "token_type_ids": [],
        "attention_mask": [],
        "start_positions": [],
        "end_positions": [],
    }
    plans: list[qa.QAPlan | None] = []
    counts: list[int] = []
    for question, context, texts, starts in zip(
        table["question"], table["context"], table["answer_texts"], table["answer_starts"], strict=True
    ):
        try:
            plan = qa.plan(question, context, backend, max_length)
        except ValueError:
            plans.append(None)
            counts.append(0)
            continue
        plans.append(plan)
        counts.append(len(plan.windows))
        for window in plan.windows:
            in_context = [t > 0 and not masked for t, masked in enumerate(window.p_mask)]
            first, last = (0, 0)
            if texts:
                first, last = answer_positions(
                    window.offsets, in_context, starts[0], starts[0] + len(texts[0]), 0
                )
            rows["input_ids"].append(list(window.ids))
            rows["token_type_ids"].append(list(window.type_ids))
            rows["attention_mask"].append([1] * window.length)
            rows["start_positions"].append(first)
            rows["end_positions"].append(last)
    golds = tuple(tuple(t) for t in table["answer_texts"])
    return QAEvalSet(datasets.Dataset.from_dict(rows), tuple(plans), golds, tuple(counts))
