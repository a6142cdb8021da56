"""The Ray Data actor of `bertserve batch` and `bertserve evaluate`: one model, loaded once per
actor by the server's replica code (workers/replica.py, in the actor's process), and the
synchronous runner (jobs/runner.py) over each block of rows.

What a job does with a block is its `BlockJob`: rows → task queries → runner → output columns.
Each block's row and failure counts go to a `ProgressCounter` actor, which the driver polls for
its progress line; a block is done only once the counter has them, so that the totals the driver
reads after the last block (`--output-dir`: the job's summary) are exact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from bertserve.jobs.model import JobModel
from bertserve.jobs.runner import Compute, Runner

if TYPE_CHECKING:
    import pyarrow as pa


class BlockJob(Protocol):
    """A job's work on one block: the output block, and how many of its rows failed."""

    def __call__(self, block: pa.Table, runner: Runner) -> tuple[pa.Table, int]: ...


class ModelActor:
    """The callable class for `Dataset.map_batches(..., compute=ActorPoolStrategy(...))`. The
    model loads in the constructor; a model that cannot load fails the actor (and the job)
    with the replica's one-line reason. `compute` replaces the model (tests)."""

    def __init__(
        self, model: JobModel, job: BlockJob, counter: Any = None, compute: Compute | None = None
    ) -> None:
        if compute is None:
            from bertserve.workers.replica import ReplicaActor

            replica = ReplicaActor(model.spec, f"{model.name}-job")
            report = replica.ready()
            if report.load_error:
                raise RuntimeError(f"cannot load model {model.name!r}: {report.load_error}")
            compute = replica.compute
        self.runner = Runner(
            model.view(),
            compute,
            max_batch_size=model.max_batch_size,
            max_batch_tokens=model.max_batch_tokens,
            min_padding_efficiency=model.min_padding_efficiency,
        )
        self._job = job
        self._counter = counter

    def __call__(self, block: pa.Table) -> pa.Table:
        before = self.runner.stats.compute_s
        out, failed = self._job(block, self.runner)
        if self._counter is not None:
            import ray

            # Waited for: a call not yet delivered when the driver reads the totals would leave
            # them short (calls from different processes to one actor have no common order).
            added = self._counter.add.remote(block.num_rows, failed, self.runner.stats.compute_s - before)
            ray.get(added, timeout=30)
        return out


class ProgressCounter:
    """Rows done and failed so far over every actor, and the seconds the model computed (a Ray
    actor with no CPU of its own)."""

    def __init__(self) -> None:
        self.rows = 0
        self.failed = 0
        self.compute_s = 0.0

    def add(self, rows: int, failed: int, compute_s: float = 0.0) -> None:
        self.rows += rows
        self.failed += failed
        self.compute_s += compute_s

    def get(self) -> tuple[int, int]:
        return self.rows, self.failed

    def seconds(self) -> float:
        return self.compute_s
