"""The string options of the client methods, each standing for a ``bertserve.v1`` enum value.

The clients accept these names case-insensitively; ``None`` leaves the enum field unspecified (the
server's default). Any other value raises :class:`ValueError` listing the choices, before any call.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

__all__ = ["AggregationOption", "PoolingOption", "ScoreFunctionOption", "TruncationOption"]

TruncationOption: TypeAlias = Literal["reject", "truncate", "split"]
"""``TruncationPolicy``: reject over-long inputs (the server default), cut them to the model's maximum
length, or split them into overlapping windows and average (``classify_sequence`` and ``embed`` only)."""

ScoreFunctionOption: TypeAlias = Literal["softmax", "sigmoid", "none"]
"""``ScoreFunction`` of ``classify_sequence`` (the pipeline's ``function_to_apply``); ``"none"``: raw
logits. Unset: the checkpoint's default."""

AggregationOption: TypeAlias = Literal["none", "simple", "first", "average", "max"]
"""``AggregationStrategy`` of ``classify_tokens`` (the pipeline's ``aggregation_strategy``). Unset:
``"none"``."""

PoolingOption: TypeAlias = Literal["mean", "cls"]
"""``Pooling`` of ``embed``: the mean of the token vectors or the [CLS] vector. Unset: ``"mean"``."""
