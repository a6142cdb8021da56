"""Domain types of the front end: what requests ask and what answers hold, free of protobuf."""

from __future__ import annotations

import enum
from dataclasses import dataclass

DEFAULT_TOP_K = 5


class Truncation(enum.Enum):
    REJECT = "reject"
    TRUNCATE = "truncate"
    # ClassifySequence and Embed: overlapping windows, mean of their scores or vectors.
    SPLIT = "split"


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
    windows: int = 1


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
class ReplacedTarget:
    """A FillMask target that is not one vocabulary entry: the entry used in its place."""

    index: int  # in FillMaskQuery.targets
    token_id: int
    token: str


@dataclass(frozen=True)
class FillMaskAnswer:
    results: tuple[FillMaskResult, ...]
    model: str
    timing: Timing
    replaced_targets: tuple[ReplacedTarget, ...] = ()
    ignored_targets: tuple[int, ...] = ()  # indices in FillMaskQuery.targets


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


# ---- ClassifySequence ----------------------------------------------------------------------
class ScoreFunction(enum.Enum):
    DEFAULT = "default"  # the checkpoint's: sigmoid for multi-label or one label, else softmax
    SOFTMAX = "softmax"
    SIGMOID = "sigmoid"
    NONE = "none"


@dataclass(frozen=True)
class SequenceInput:
    text: str
    pair: str | None = None


@dataclass(frozen=True)
class ClassifySequenceQuery:
    inputs: tuple[SequenceInput, ...]
    top_k: int | None = None
    function: ScoreFunction = ScoreFunction.DEFAULT
    model: str = ""
    truncation: Truncation = Truncation.REJECT


@dataclass(frozen=True)
class LabelScore:
    label: str
    score: float
    label_id: int


@dataclass(frozen=True)
class ClassifySequenceResult:
    labels: tuple[LabelScore, ...]
    input: InputStats


@dataclass(frozen=True)
class ClassifySequenceAnswer:
    results: tuple[ClassifySequenceResult, ...]
    model: str
    timing: Timing


# ---- ClassifyTokens ------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassifyTokensQuery:
    texts: tuple[str, ...]
    aggregation: str = "none"
    # None: the pipeline's default, ("O",).
    ignore_labels: tuple[str, ...] | None = None
    model: str = ""


@dataclass(frozen=True)
class EntityResult:
    label: str
    score: float
    word: str
    start: int
    end: int
    index: int | None  # aggregation "none" only


@dataclass(frozen=True)
class ClassifyTokensResult:
    entities: tuple[EntityResult, ...]
    input: InputStats


@dataclass(frozen=True)
class ClassifyTokensAnswer:
    results: tuple[ClassifyTokensResult, ...]
    model: str
    timing: Timing


# ---- AnswerQuestion ------------------------------------------------------------------------
@dataclass(frozen=True)
class AnswerQuestionQuery:
    inputs: tuple[tuple[str, str], ...]  # (question, context)
    top_k: int = 1
    max_answer_len: int = 15
    doc_stride: int | None = None
    handle_impossible_answer: bool = False
    max_question_len: int = 64
    model: str = ""


@dataclass(frozen=True)
class AnswerSpan:
    text: str
    score: float
    start: int
    end: int


@dataclass(frozen=True)
class AnswerQuestionResult:
    answers: tuple[AnswerSpan, ...]
    input: InputStats


@dataclass(frozen=True)
class AnswerQuestionAnswer:
    results: tuple[AnswerQuestionResult, ...]
    model: str
    timing: Timing


# ---- Embed -----------------------------------------------------------------------------------
class Pooling(enum.Enum):
    CLS = "cls"
    MEAN = "mean"


@dataclass(frozen=True)
class EmbedQuery:
    texts: tuple[str, ...]
    pooling: Pooling = Pooling.MEAN
    normalize: bool = False
    model: str = ""
    truncation: Truncation = Truncation.REJECT


@dataclass(frozen=True)
class EmbeddingResult:
    vector: tuple[float, ...]
    input: InputStats


@dataclass(frozen=True)
class EmbedAnswer:
    results: tuple[EmbeddingResult, ...]
    dimensions: int
    model: str
    timing: Timing


# ---- Tokenize --------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenizeQuery:
    texts: tuple[str, ...]
    skip_special_tokens: bool = False
    model: str = ""


@dataclass(frozen=True)
class TokenInfo:
    id: int
    token: str
    start: int
    end: int
    special: bool
    word: int | None


@dataclass(frozen=True)
class TokenizeResult:
    tokens: tuple[TokenInfo, ...]
    num_tokens: int
    exceeds_max_length: bool


@dataclass(frozen=True)
class TokenizeAnswer:
    results: tuple[TokenizeResult, ...]
    model: str
    max_sequence_length: int
    timing: Timing
