"""Model backends a replica can run: `torch_bert` (real weights) and `fake` (tests)."""

from __future__ import annotations

from typing import Protocol

from bertserve.workers.protocol import (
    EmbeddingOutput,
    EncodedBatch,
    FillMaskArgs,
    FillMaskOutput,
    LogitsOutput,
    NextSentenceOutput,
    SpanLogitsOutput,
    Task,
    TokenLogitsOutput,
)
from bertserve.workers.spec import ReplicaSpec


class Backend(Protocol):
    """A pure tensor function over padded batches."""

    device: str
    dtype: str
    tasks: tuple[Task, ...]
    vocab_size: int
    max_position_embeddings: int
    hidden_size: int
    architecture: str
    warnings: tuple[str, ...]
    # How dtype was chosen (dtype auto: what the probes measured); "" when not reported.
    dtype_choice: str
    # Which float32 linear kernels run (cpu_linear), and why; "" when not reported.
    cpu_linear_choice: str

    def fill_mask(self, batch: EncodedBatch, args: FillMaskArgs) -> FillMaskOutput: ...

    def next_sentence(self, batch: EncodedBatch) -> NextSentenceOutput: ...

    def classify_sequence(self, batch: EncodedBatch) -> LogitsOutput: ...

    def classify_tokens(self, batch: EncodedBatch) -> TokenLogitsOutput: ...

    def answer_question(self, batch: EncodedBatch) -> SpanLogitsOutput: ...

    def embed(self, batch: EncodedBatch) -> EmbeddingOutput: ...


def create_backend(spec: ReplicaSpec) -> Backend:
    """Build the backend a spec names. Imports torch only for the torch backend."""
    if spec.backend == "torch":
        from bertserve.workers.backends.torch_bert import TorchBertBackend

        return TorchBertBackend(spec)
    if spec.backend == "fake":
        from bertserve.workers.backends.fake import FakeBackend

        return FakeBackend(spec)
    raise ValueError(f"unknown backend {spec.backend!r} (expected 'torch' or 'fake')")
