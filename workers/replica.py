"""The replica actor: one model copy, pinned to a GPU or CPU threads.

The class is plain Python: workers/pool.py wraps it with `ray.remote` for the server, the offline
jobs' Ray Data actors (jobs/actor.py) and tests run it in their own process. It imports no torch
itself: the backend does, inside the replica's process. A batch runs through `compute(method,
*args)`, where `method` is a task's compute method (server/tasks/definition.py: the task's name)
and `args` what the task's `collate` made; Ray actor calls and the direct channel both land there.
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
from bertserve.workers.protocol import ReplicaReport, Task
from bertserve.workers.spec import ReplicaSpec

# What a batch may call: the backend's method of each task that replicas compute (Tokenize runs in
# the front end only).
COMPUTE_METHODS = frozenset(t.value for t in Task if t is not Task.TOKENIZE)


class ReplicaActor:
    """One model replica. Loads its backend once, in the constructor. (The front end's view of a
    replica, its handle in workers/pool.py, is what server/scheduling/router.py calls a Replica.)"""

    def __init__(self, spec: ReplicaSpec, replica_id: str, index: int = 0) -> None:
        self._spec = spec
        self._replica_id = replica_id
        self._backend: Backend | None = None
        self._load_error = ""
        # Batches may arrive both as Ray calls and on the channel: one runs at a time.
        self._one_batch = threading.Lock()
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
            self._channel = ChannelServer(lambda method, args: self.compute(method, *args))
        return self._channel.start()

    def compute(self, method: str, *args: Any) -> Any:
        """Run the backend's compute method `method` on a collated batch, one batch at a time
        (batches may arrive both as Ray calls and on the channel)."""
        if method not in COMPUTE_METHODS:
            raise ValueError(f"unknown replica method {method!r}")
        with self._one_batch:
            return getattr(self._loaded(), method)(*args)

    def _loaded(self) -> Backend:
        if self._backend is None:
            raise RuntimeError(f"replica has no model: {self._load_error}")
        return self._backend

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
