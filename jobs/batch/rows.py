"""How a row of `bertserve batch` becomes one request of the task's RPC, and its outcome a result.

Each row is one input: its request message is built by the Python client's own request builders
(bertserve_client, with the options under the client's names), converted by the task's definition
exactly as the server converts it (`to_query`), and run through the runner. `result` is the task's
per-input result message in protobuf's JSON mapping (field names as in the .proto files, every
field present); `error` is the message the server gives for that input, with the request's field
paths (`texts[0]`) naming the row's columns instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from bertserve.jobs.batch.options import OPTION_TASKS, Columns, Options
from bertserve.server.tasks.definition import TaskDefinition
from bertserve.server.tasks.registry import DEFINITIONS
from bertserve.workers.protocol import Task
from bertserve_client import _messages as requests

Values = Mapping[str, str | None]
"""One row's inputs by role: "text", "pair", "question", "context"."""


def _fill_mask(v: Values, o: Options) -> Message:
    return requests.fill_mask_request(
        [_text(v, "text")],
        top_k=o.top_k,
        targets=list(o.targets or ()),
        model="",
        truncate=False,
        truncation=o.truncation,
    )


def _next_sentence(v: Values, o: Options) -> Message:
    pair = (_text(v, "text"), _text(v, "pair"))
    return requests.next_sentence_request([pair], model="", truncate=False, truncation=o.truncation)


def _classify_sequence(v: Values, o: Options) -> Message:
    text, pair = _text(v, "text"), v.get("pair")
    item: str | tuple[str, str] = text if pair is None else (text, _text(v, "pair"))
    return requests.classify_sequence_request(
        [item], top_k=o.top_k, function_to_apply=o.function_to_apply, truncation=o.truncation, model=""
    )


def _classify_tokens(v: Values, o: Options) -> Message:
    return requests.classify_tokens_request(
        [_text(v, "text")], aggregation=o.aggregation, ignore_labels=o.ignore_labels, model=""
    )


def _answer_question(v: Values, o: Options) -> Message:
    return requests.answer_question_request(
        [(_text(v, "question"), _text(v, "context"))],
        None,
        top_k=o.top_k,
        max_answer_len=o.max_answer_len,
        doc_stride=o.doc_stride,
        max_question_len=o.max_question_len,
        handle_impossible_answer=bool(o.handle_impossible_answer),
        model="",
    )


def _embed(v: Values, o: Options) -> Message:
    return requests.embed_request(
        [_text(v, "text")], pooling=o.pooling, normalize=bool(o.normalize), truncation=o.truncation, model=""
    )


@dataclass(frozen=True)
class _Shape:
    """A task's row shape: its input roles (required, optional) and the field paths of its
    request that name them in error messages (longest first)."""

    build: Callable[[Values, Options], Message]
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    paths: tuple[tuple[str, str], ...] = ()


_SHAPES: dict[Task, _Shape] = {
    Task.FILL_MASK: _Shape(_fill_mask, ("text",), paths=(("texts[0]", "text"),)),
    Task.NEXT_SENTENCE: _Shape(
        _next_sentence,
        ("text", "pair"),
        paths=(("pairs[0].second", "pair"), ("pairs[0].first", "text"), ("pairs[0]", "")),
    ),
    Task.CLASSIFY_SEQUENCE: _Shape(
        _classify_sequence,
        ("text",),
        ("pair",),
        paths=(("inputs[0].text_pair", "pair"), ("inputs[0].text", "text"), ("inputs[0]", "")),
    ),
    Task.CLASSIFY_TOKENS: _Shape(_classify_tokens, ("text",), paths=(("texts[0]", "text"),)),
    Task.ANSWER_QUESTION: _Shape(
        _answer_question,
        ("question", "context"),
        paths=(("inputs[0].question", "question"), ("inputs[0].context", "context"), ("inputs[0]", "")),
    ),
    Task.EMBED: _Shape(_embed, ("text",), paths=(("texts[0]", "text"),)),
}


class RowError(ValueError):
    """A row's input cannot make a request (null, or not a string); the message names the column."""


def _text(values: Values, role: str) -> str:
    value = values.get(role)
    if value is None:
        raise RowError(f"{{{role}}} is null")
    return value


def options_for(task: Task, options: Options) -> list[str]:
    """The options given (not None) that do not apply to `task`."""
    return [
        f.name
        for f in fields(Options)
        if getattr(options, f.name) is not None and task not in OPTION_TASKS[f.name]
    ]


class RowTask:
    """One task's rows: which columns are its inputs, the request of a row, the error text."""

    def __init__(self, task: Task, columns: Columns, options: Options, available: Sequence[str]) -> None:
        self.definition: TaskDefinition[Any, Any, Any, Any] = DEFINITIONS[task]
        self.options = options
        self._shape = _SHAPES[task]
        by_role = {f.name: getattr(columns, f.name) for f in fields(Columns)}
        self.roles: dict[str, str] = {role: by_role[role] for role in self._shape.required}
        for role in self._shape.optional:
            if by_role[role] in available:
                self.roles[role] = by_role[role]
        names = {role: f"column {column!r}" for role, column in self.roles.items()}
        pair = ", ".join(repr(c) for c in self.roles.values())
        self._names = names
        paths = [
            (path, names[role] if role else f"the row (columns {pair})")
            for path, role in self._shape.paths
            if not role or role in names
        ]
        self._pattern = re.compile("|".join(re.escape(p) for p, _ in paths)) if paths else None
        self._replacement = dict(paths)
        self.request({role: "x" for role in self.roles})  # options checked once, before any row

    @property
    def columns(self) -> list[str]:
        """The input columns, in role order."""
        return list(self.roles.values())

    def request(self, values: Values) -> Message:
        """The row's request; RowError for a null or non-string input, ValueError for options."""
        try:
            for role, value in values.items():
                if value is not None and not isinstance(value, str):
                    raise RowError(f"{{{role}}} is not text (a {type(value).__name__})")
            return self._shape.build(values, self.options)
        except RowError as exc:
            raise RowError(self.explain(str(exc))) from None

    def explain(self, message: str) -> str:
        """A message with the request's field paths, or {role} placeholders, naming the columns."""
        for role, name in self._names.items():
            message = message.replace(f"{{{role}}}", name)
        if self._pattern is None:
            return message
        return self._pattern.sub(lambda m: self._replacement[m.group(0)], message)


def result_dict(definition: TaskDefinition[Any, Any, Any, Any], result: Any) -> dict[str, Any]:
    """One input's result as the JSON object of its result message (protobuf's JSON mapping, the
    .proto field names, every field present)."""
    return json_format.MessageToDict(
        definition.result_message(result),
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )


def result_json(definition: TaskDefinition[Any, Any, Any, Any], result: Any) -> str:
    """`result_dict` as JSON text."""
    return json.dumps(result_dict(definition, result), ensure_ascii=False, separators=(",", ":"))
