"""The replica: a Ray actor holding one model copy, pinned to a GPU or CPU threads.

The class is plain Python so tests can run it in-process; workers/pool.py wraps it with
`ray.remote`. It imports no torch itself: the backend does, inside the replica process.
"""

from __future__ import annotations

import os

from bertserve.workers.backends import Backend, create_backend
from bertserve.workers.errors import first_line
from bertserve.workers.protocol import (
    EmbeddingOutput,
    EncodedBatch,
    FillMaskArgs,
    FillMaskOutput,
    LogitsOutput,
    NextSentenceOutput,
    ReplicaReport,
    SpanLogitsOutput,
    TokenLogitsOutput,
)
from bertserve.workers.spec import ReplicaSpec


class Replica:
    """One model replica. Loads its backend once, in the constructor."""

    def __init__(self, spec: ReplicaSpec, replica_id: str) -> None:
        self._spec = spec
        self._replica_id = replica_id
        self._backend: Backend | None = None
        self._load_error = ""
        try:
            self._backend = create_backend(spec)
        except Exception as exc:
            prefix = "" if type(exc).__name__ == "ModelLoadError" else f"{type(exc).__name__}: "
            self._load_error = prefix + first_line(exc)

    def ready(self) -> ReplicaReport:
        """Answers once the model is loaded; says where it runs."""
        b = self._backend
        if b is None:
            return ReplicaReport(
                self._replica_id,
                "",
                self._spec.dtype,
                (),
                _node_id(),
                os.getpid(),
                0,
                0,
                load_error=self._load_error,
            )
        return ReplicaReport(
            replica_id=self._replica_id,
            device=b.device,
            dtype=b.dtype,
            tasks=b.tasks,
            node_id=_node_id(),
            pid=os.getpid(),
            vocab_size=b.vocab_size,
            max_position_embeddings=b.max_position_embeddings,
            warnings=b.warnings,
            architecture=b.architecture,
            hidden_size=b.hidden_size,
        )

    def _loaded(self) -> Backend:
        if self._backend is None:
            raise RuntimeError(f"replica has no model: {self._load_error}")
        return self._backend

    def fill_mask(self, batch: EncodedBatch, args: FillMaskArgs) -> FillMaskOutput:
        return self._loaded().fill_mask(batch, args)

    def next_sentence(self, batch: EncodedBatch) -> NextSentenceOutput:
        return self._loaded().next_sentence(batch)

    def classify_sequence(self, batch: EncodedBatch) -> LogitsOutput:
        return self._loaded().classify_sequence(batch)

    def classify_tokens(self, batch: EncodedBatch) -> TokenLogitsOutput:
        return self._loaded().classify_tokens(batch)

    def answer_question(self, batch: EncodedBatch) -> SpanLogitsOutput:
        return self._loaded().answer_question(batch)

    def embed(self, batch: EncodedBatch) -> EmbeddingOutput:
        return self._loaded().embed(batch)

    def pid(self) -> int:
        """For fault-injection tests: the process to kill."""
        return os.getpid()


def _node_id() -> str:
    try:
        import ray

        if ray.is_initialized():
            return str(ray.get_runtime_context().get_node_id())
    except Exception:
        pass
    return "local"
