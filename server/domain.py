"""Domain types of the front end: what requests ask and what answers hold, free of protobuf."""

from __future__ import annotations

import enum
from dataclasses import dataclass

DEFAULT_TOP_K = 5


class Truncation(enum.Enum):
    REJECT = "reject"
    TRUNCATE = "truncate"


@dataclass(frozen=True)
class RequestLimits:
    max_inputs: int
    max_text_chars: int
    max_top_k: int
    max_sequence_length: int


@dataclass(frozen=True)
class InputStats:
    num_tokens: int
    truncated: bool


@dataclass(frozen=True)
class Timing:
    tokenization_us: int
    queue_us: int
    inference_us: int
    total_us: int


@dataclass(frozen=True)
class FillMaskQuery:
    texts: tuple[str, ...]
    top_k: int | None = None
    targets: tuple[str, ...] = ()
    model: str = ""
    truncation: Truncation = Truncation.REJECT


@dataclass(frozen=True)
class Candidate:
    token_id: int
    token: str
    score: float
    sequence: str


@dataclass(frozen=True)
class MaskResult:
    position: int
    candidates: tuple[Candidate, ...]


@dataclass(frozen=True)
class FillMaskResult:
    masks: tuple[MaskResult, ...]
    input: InputStats


@dataclass(frozen=True)
class FillMaskAnswer:
    results: tuple[FillMaskResult, ...]
    model: str
    timing: Timing


@dataclass(frozen=True)
class NextSentenceQuery:
    pairs: tuple[tuple[str, str], ...]
    model: str = ""
    truncation: Truncation = Truncation.REJECT


@dataclass(frozen=True)
class NextSentenceResult:
    is_next_probability: float
    logits: tuple[float, float]
    input: InputStats


@dataclass(frozen=True)
class NextSentenceAnswer:
    results: tuple[NextSentenceResult, ...]
    model: str
    timing: Timing
