"""Validation and long-input helpers shared by the tasks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from bertserve.server.domain import InputStats, RequestLimits, Truncation
from bertserve.server.errors import InvalidInput
from bertserve.server.tasks.definition import Window
from bertserve.server.tokenization import Encoded, TextTokenizer


def check_count(n: int, what: str, limits: RequestLimits) -> None:
    if n == 0:
        raise InvalidInput(f"the request has no {what}")
    if n > limits.max_inputs:
        raise InvalidInput(f"the request has {n} {what}; at most {limits.max_inputs} are allowed per request")


def check_text(text: str, field: str, limits: RequestLimits) -> None:
    """Reject empty or over-long text before tokenizing. Never echoes the text."""
    if not text.strip():
        raise InvalidInput(f"{field} is empty")
    if len(text) > limits.max_text_chars:
        raise InvalidInput(f"{field} has {len(text)} characters; at most {limits.max_text_chars} are allowed")


# Hints name a policy as the proto does and as the Python client's `truncation=` strings do
# (bertserve_client.options.TruncationOption), so that every caller finds the spelling it uses.
# They write the field as `truncation=`, so that a stream's error names it `request.truncation=`.
TRUNCATE_HINT = 'truncation=TRUNCATION_POLICY_TRUNCATE ("truncate" in the Python client)'


def check_length(
    enc: Encoded, field: str, limits: RequestLimits, truncation: Truncation, can_split: bool = False
) -> None:
    if enc.length > limits.max_sequence_length:
        hint = 'truncation=TRUNCATION_POLICY_TRUNCATE cuts it; "truncate" in the Python client'
        if can_split:
            hint = (
                "truncation=TRUNCATION_POLICY_TRUNCATE cuts it, TRUNCATION_POLICY_SPLIT runs it in "
                'windows; "truncate" or "split" in the Python client'
            )
        raise InvalidInput(
            f"{field} is {enc.length} tokens long; the model takes at most {limits.max_sequence_length} "
            f"({hint})"
            if truncation is Truncation.REJECT
            else f"{field} is too long"
        )


def check_no_split(truncation: Truncation, rpc: str) -> None:
    if truncation is Truncation.SPLIT:
        raise InvalidInput(
            f"{rpc} cannot split inputs into windows; use truncation=TRUNCATION_POLICY_REJECT or "
            'TRUNCATION_POLICY_TRUNCATE ("reject" or "truncate" in the Python client)'
        )


# Most model inputs (windows) one input may become: bounds the work one request can queue.
MAX_WINDOWS_PER_INPUT = 512


def check_windows(count: int, field: str, hint: str) -> None:
    if count > MAX_WINDOWS_PER_INPUT:
        raise InvalidInput(
            f"{field} would run as {count} windows; at most {MAX_WINDOWS_PER_INPUT} are allowed ({hint})"
        )


def split_windows(enc: Encoded, max_length: int) -> list[Encoded]:
    """Cut a single-text input ([CLS] tokens [SEP]) into windows of at most max_length tokens,
    each with its own [CLS] and [SEP], consecutive windows sharing a quarter of a window.
    An input that fits is returned as is."""
    if enc.length <= max_length:
        return [enc]
    cls_id, sep_id = enc.ids[0], enc.ids[-1]
    content = enc.ids[1:-1]
    width = max_length - 2
    step = max(1, width - width // 4)
    windows = []
    for start in range(0, len(content), step):
        chunk = content[start : start + width]
        ids = (cls_id, *chunk, sep_id)
        windows.append(Encoded(ids, (0,) * len(ids), truncated=False))
        if start + width >= len(content):
            break
    return windows


@dataclass(frozen=True)
class Windowed:
    """Per input: the windows the model runs, and what to report about the input."""

    windows: tuple[tuple[Encoded, ...], ...]
    stats: tuple[InputStats, ...]


def encode_with_policy(
    tokenizer: TextTokenizer,
    texts: Sequence[str | tuple[str, str]],
    field: str,
    limits: RequestLimits,
    truncation: Truncation,
) -> Windowed:
    """Encode texts under a long-input policy: reject, truncate, or split into windows."""
    encoded = tokenizer.encode(texts, truncate=truncation is Truncation.TRUNCATE)
    windows: list[tuple[Encoded, ...]] = []
    stats: list[InputStats] = []
    for i, enc in enumerate(encoded):
        if truncation is Truncation.SPLIT:
            parts = split_windows(enc, limits.max_sequence_length)
            check_windows(len(parts), f"{field}[{i}]", f"use {TRUNCATE_HINT}")
        else:
            check_length(enc, f"{field}[{i}]", limits, truncation, can_split=True)
            parts = [enc]
        windows.append(tuple(parts))
        stats.append(InputStats(sum(w.length for w in parts), enc.truncated, len(parts)))
    return Windowed(tuple(windows), tuple(stats))


class _Sequence(Protocol):
    @property
    def ids(self) -> tuple[int, ...]: ...

    @property
    def type_ids(self) -> tuple[int, ...]: ...


def as_windows(per_input: Sequence[Sequence[_Sequence]]) -> tuple[tuple[Window, ...], ...]:
    """Per input, its model inputs as windows without per-input arguments."""
    return tuple(tuple(Window(s.ids, s.type_ids) for s in sequences) for sequences in per_input)
