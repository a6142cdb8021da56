"""The replica: a Ray actor holding one model copy, pinned to a GPU or CPU threads.

The class is plain Python so tests can run it in-process; workers/pool.py wraps it with
`ray.remote`. It imports no torch itself: the backend does, inside the replica process.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from bertserve.workers.affinity import CpuClaim, claim_cpus, pin_process
from bertserve.workers.backends import Backend, create_backend
from bertserve.workers.channel import ChannelServer
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

# What a batch may call, over a Ray actor call or the direct channel (workers/channel.py).
COMPUTE_METHODS = frozenset(
    {"fill_mask", "next_sentence", "classify_sequence", "classify_tokens", "answer_question", "embed"}
)


class Replica:
    """One model replica. Loads its backend once, in the constructor."""

    def __init__(self, spec: ReplicaSpec, replica_id: str, index: int = 0) -> None:
        self._spec = spec
        self._replica_id = replica_id
        self._backend: Backend | None = None
        self._load_error = ""
        # Batches may arrive both as Ray calls and on the channel: one runs at a time.
        self._compute = threading.Lock()
        self._channel: ChannelServer | None = None
        # The slot's own cores first, before the model loads, so that a server's replicas,
        # which start together, take the cores in order (workers/affinity.py).
        pinning = spec.pin_cpus and spec.device == "cpu"
        self._cpus = CpuClaim()
        if pinning:
            self._cpus = claim_cpus(spec.threads, slot=spec.cpu_slot_base + index, any_free=False)
            pin_process(self._cpus.cpus)
        if spec.backend == "fake" and index > 0 and spec.fake_load_ms > 0:
            time.sleep(spec.fake_load_ms / 1000.0)  # a late replica, for start-up tests
        try:
            self._backend = create_backend(spec)
        except Exception as exc:
            prefix = "" if type(exc).__name__ == "ModelLoadError" else f"{type(exc).__name__}: "
            self._load_error = prefix + first_line(exc)
        if pinning and not self._cpus.cpus and self._backend is not None:
            # The slot's cores were taken (another server, a replica beyond the node's cores):
            # any free ones, now that the replicas starting alongside have claimed theirs.
            self._cpus = claim_cpus(spec.threads)
            pin_process(self._cpus.cpus)

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
            dtype_choice=b.dtype_choice,
            cpu_linear_choice=b.cpu_linear_choice,
            cpus=self._cpus.cpus,
        )

    def open_channel(self) -> str:
        """Start the direct channel (workers/channel.py) and return its address. Only a front end
        on this replica's node can use it."""
        if self._channel is None:
            self._channel = ChannelServer(self._dispatch)
        return self._channel.start()

    def _dispatch(self, method: str, args: tuple[Any, ...]) -> Any:
        if method not in COMPUTE_METHODS:
            raise ValueError(f"unknown replica method {method!r}")
        return getattr(self, method)(*args)

    def _loaded(self) -> Backend:
        if self._backend is None:
            raise RuntimeError(f"replica has no model: {self._load_error}")
        return self._backend

    def fill_mask(self, batch: EncodedBatch, args: FillMaskArgs) -> FillMaskOutput:
        with self._compute:
            return self._loaded().fill_mask(batch, args)

    def next_sentence(self, batch: EncodedBatch) -> NextSentenceOutput:
        with self._compute:
            return self._loaded().next_sentence(batch)

    def classify_sequence(self, batch: EncodedBatch) -> LogitsOutput:
        with self._compute:
            return self._loaded().classify_sequence(batch)

    def classify_tokens(self, batch: EncodedBatch) -> TokenLogitsOutput:
        with self._compute:
            return self._loaded().classify_tokens(batch)

    def answer_question(self, batch: EncodedBatch) -> SpanLogitsOutput:
        with self._compute:
            return self._loaded().answer_question(batch)

    def embed(self, batch: EncodedBatch) -> EmbeddingOutput:
        with self._compute:
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
