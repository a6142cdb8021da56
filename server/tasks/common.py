"""Validation and batching helpers shared by every task."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bertserve.server.domain import RequestLimits, Truncation
from bertserve.server.errors import InvalidInput
from bertserve.server.scheduling.work import WorkItem
from bertserve.server.tokenization import Encoded
from bertserve.workers.protocol import EncodedBatch


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


def check_length(enc: Encoded, field: str, limits: RequestLimits, truncation: Truncation) -> None:
    if enc.length > limits.max_sequence_length:
        raise InvalidInput(
            f"{field} is {enc.length} tokens long; the model takes at most {limits.max_sequence_length} "
            "(set truncation to TRUNCATION_POLICY_TRUNCATE to cut it)"
            if truncation is Truncation.REJECT
            else f"{field} is too long"
        )


def pad_batch(items: Sequence[WorkItem], pad_id: int) -> EncodedBatch:
    """Right-pad the items to the longest one."""
    longest = max(it.length for it in items)
    ids = np.full((len(items), longest), pad_id, dtype=np.int64)
    types = np.zeros((len(items), longest), dtype=np.int64)
    mask = np.zeros((len(items), longest), dtype=np.int64)
    for row, item in enumerate(items):
        n = item.length
        ids[row, :n] = item.ids
        types[row, :n] = item.type_ids
        mask[row, :n] = 1
    return EncodedBatch(input_ids=ids, attention_mask=mask, token_type_ids=types)
