"""A deterministic stand-in for the model, for tests of scheduling, faults and scaling.

No weights and no torch: outputs are a fixed function of the input ids, and each batch can
be made to take a set time so tests can hold replicas busy.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from bertserve.workers.protocol import (
    EmbeddingOutput,
    EncodedBatch,
    FillMaskArgs,
    FillMaskOutput,
    FloatArray,
    LogitsOutput,
    NextSentenceOutput,
    SpanLogitsOutput,
    Task,
    TokenLogitsOutput,
)
from bertserve.workers.spec import ReplicaSpec

FAKE_VOCAB_SIZE = 1000
FAKE_MAX_POSITIONS = 512
FAKE_HIDDEN = 8
FAKE_LABELS = 4


def _num_labels(checkpoint: str) -> int:
    """The label count of a local checkpoint's config.json (id2label, else num_labels), else
    FAKE_LABELS (a Hub id, or no config)."""
    if not checkpoint:
        return FAKE_LABELS
    try:
        config = json.loads((Path(checkpoint) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return FAKE_LABELS
    labels = config.get("id2label") or {}
    count = len(labels) if isinstance(labels, dict) else 0
    num = config.get("num_labels")
    return count or (num if isinstance(num, int) and num > 0 else FAKE_LABELS)


def _us(start: float) -> int:
    return int((time.perf_counter() - start) * 1e6)


class FakeBackend:
    def __init__(self, spec: ReplicaSpec) -> None:
        self.device = "cpu"
        self.dtype = spec.dtype
        self.dtype_choice = "fake backend"
        self.cpu_linear_choice = "fake backend"
        self.tasks: tuple[Task, ...] = (
            Task.FILL_MASK,
            Task.NEXT_SENTENCE,
            Task.CLASSIFY_SEQUENCE,
            Task.CLASSIFY_TOKENS,
            Task.ANSWER_QUESTION,
            Task.EMBED,
        )
        self.warnings: tuple[str, ...] = ("fake backend: outputs are synthetic",)
        self.vocab_size = FAKE_VOCAB_SIZE
        self.max_position_embeddings = FAKE_MAX_POSITIONS
        self.hidden_size = FAKE_HIDDEN
        self.architecture = "fake"
        self._delay_s = spec.fake_delay_ms / 1000.0
        # As many labels as the checkpoint's head has (the front end decodes with its id2label).
        self.num_labels = _num_labels(spec.checkpoint)

    def _work(self) -> float:
        start = time.perf_counter()
        if self._delay_s:
            time.sleep(self._delay_s)
        return start

    def fill_mask(self, batch: EncodedBatch, args: FillMaskArgs) -> FillMaskOutput:
        start = self._work()
        n = len(args.mask_rows)
        # Candidate j of a mask is (row's first real token + mask position + j) mod vocab.
        base = batch.input_ids[args.mask_rows, 1] + args.mask_cols
        ids = (base[:, None] + np.arange(args.top_k)[None, :]) % FAKE_VOCAB_SIZE
        scores = np.tile(1.0 / (2.0 ** np.arange(1, args.top_k + 1)), (n, 1)).astype(np.float32)
        targets = tuple(
            None if t is None else np.full(len(t), 1.0 / FAKE_VOCAB_SIZE, np.float32) for t in args.targets
        )
        return FillMaskOutput(ids.astype(np.int64), scores, targets, _us(start))

    def _lengths(self, batch: EncodedBatch) -> FloatArray:
        lengths: FloatArray = batch.attention_mask.sum(axis=1).astype(np.float32)
        return lengths

    def next_sentence(self, batch: EncodedBatch) -> NextSentenceOutput:
        start = self._work()
        lengths = self._lengths(batch)
        logits = np.stack([lengths / 10.0, -lengths / 10.0], axis=1).astype(np.float32)
        return NextSentenceOutput(logits, _us(start))

    def classify_sequence(self, batch: EncodedBatch) -> LogitsOutput:
        start = self._work()
        lengths = self._lengths(batch)[:, None]
        logits = (lengths / (1.0 + np.arange(self.num_labels)[None, :])).astype(np.float32)
        return LogitsOutput(logits, _us(start))

    def classify_tokens(self, batch: EncodedBatch) -> TokenLogitsOutput:
        start = self._work()
        ids = batch.input_ids.astype(np.float32)[..., None]
        logits = np.cos(ids * (1.0 + np.arange(self.num_labels))).astype(np.float32)
        return TokenLogitsOutput(logits, _us(start))

    def answer_question(self, batch: EncodedBatch) -> SpanLogitsOutput:
        start = self._work()
        ids = batch.input_ids.astype(np.float32)
        return SpanLogitsOutput(np.sin(ids), np.cos(ids), _us(start))

    def embed(self, batch: EncodedBatch) -> EmbeddingOutput:
        start = self._work()
        vectors = np.cos(batch.input_ids[..., None] * (1.0 + np.arange(FAKE_HIDDEN))).astype(np.float32)
        mask = batch.attention_mask[..., None].astype(np.float32)
        mean = (vectors * mask).sum(axis=1) / mask.sum(axis=1)
        return EmbeddingOutput(vectors[:, 0], mean.astype(np.float32), _us(start))
