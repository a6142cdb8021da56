"""What crosses the Ray boundary between the front end and a replica.

Plain frozen dataclasses of numpy arrays: small, picklable, no torch. Requests go in as
padded token arrays; results come back as small arrays (top-k at mask positions, logits).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


class Task(str, Enum):
    """Tasks a model can serve. Values are stable strings used in config files, logs and metrics.

    TOKENIZE runs in the front end only; every other task is computed by replicas.
    """

    FILL_MASK = "fill_mask"
    NEXT_SENTENCE = "next_sentence"
    CLASSIFY_SEQUENCE = "classify_sequence"
    CLASSIFY_TOKENS = "classify_tokens"
    ANSWER_QUESTION = "answer_question"
    EMBED = "embed"
    TOKENIZE = "tokenize"


@dataclass(frozen=True)
class EncodedBatch:
    """A padded batch: every array is [batch, seq_len]."""

    input_ids: IntArray
    attention_mask: IntArray
    token_type_ids: IntArray

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def padded_tokens(self) -> int:
        return int(self.input_ids.size)


@dataclass(frozen=True)
class FillMaskArgs:
    """A fill-mask batch's arguments besides its token arrays (collated from its inputs' masks).

    mask_rows/mask_cols: the (batch row, token position) of every mask, in output order.
    top_k: candidates per mask (the batch's largest request top_k).
    targets: per mask, the vocabulary ids to score (None: no restriction).
    """

    mask_rows: IntArray
    mask_cols: IntArray
    top_k: int
    targets: tuple[IntArray | None, ...] = field(default=())


@dataclass(frozen=True)
class FillMaskOutput:
    """Per mask (same order as FillMaskArgs): top-k ids and probabilities, best first;
    target_scores[i] are the probabilities at FillMaskArgs.targets[i] (or None)."""

    top_ids: IntArray
    top_scores: FloatArray
    target_scores: tuple[FloatArray | None, ...]
    compute_us: int


@dataclass(frozen=True)
class NextSentenceOutput:
    """Next-sentence head logits, [batch, 2]: column 0 = B follows A, column 1 = random."""

    logits: FloatArray
    compute_us: int


@dataclass(frozen=True)
class LogitsOutput:
    """One row of logits per sequence, [batch, labels] (sequence classification)."""

    logits: FloatArray
    compute_us: int


@dataclass(frozen=True)
class TokenLogitsOutput:
    """Logits per token, [batch, seq_len, labels] (token classification); padding rows included."""

    logits: FloatArray
    compute_us: int


@dataclass(frozen=True)
class SpanLogitsOutput:
    """Start and end logits per token, each [batch, seq_len] (question answering)."""

    start_logits: FloatArray
    end_logits: FloatArray
    compute_us: int


@dataclass(frozen=True)
class EmbeddingOutput:
    """Pooled last hidden states, each [batch, hidden]: the [CLS] vector and the mean over the
    sequence's real tokens (both are cheap; the front end picks what the request asked)."""

    cls: FloatArray
    mean: FloatArray
    compute_us: int


@dataclass(frozen=True)
class ReplicaReport:
    """What a replica says about itself once warm."""

    replica_id: str
    device: str
    dtype: str
    tasks: tuple[Task, ...]
    node_id: str
    pid: int
    vocab_size: int
    max_position_embeddings: int
    warnings: tuple[str, ...] = ()
    architecture: str = ""
    hidden_size: int = 0
    # How the replica chose its dtype (dtype auto: the probes' figures).
    dtype_choice: str = ""
    # Which float32 linear kernels a CPU replica runs ("torch: ..." or "onednn: ..."), and why.
    cpu_linear_choice: str = ""
    # CPUs the replica is pinned to (workers/affinity.py); empty when unpinned.
    cpus: tuple[int, ...] = ()
    # Set when the model could not be loaded; the replica then serves nothing.
    load_error: str = ""
