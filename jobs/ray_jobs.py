"""Ray for `bertserve batch` and `bertserve evaluate`: the actor pool's resources, Ray Data's
settings, the progress polling and one-line errors.

- Without --ray-address a private local instance starts (`address="local"`: with several Ray
  instances on one machine `address="auto"` fails), with at least one logical CPU more than the
  pool.
- An actor pool holding every CPU of the cluster starves Ray Data's read tasks and the job hangs
  (ray-project/ray#44687): the pool may take at most the cluster's CPUs less one; a cluster that
  lacks that CPU is refused before any work.
- Blocks come out of order by default once several actors run: `preserve_order` is set.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from bertserve.jobs.actor import BlockJob, ModelActor, ProgressCounter
from bertserve.jobs.model import JobModel, default_threads
from bertserve.jobs.progress import RowProgress
from bertserve.workers.errors import first_line
from bertserve.workers.ray_init import RayStartError, init_ray

T = TypeVar("T")


class JobError(ValueError):
    """The job could not run; the message is one line."""


@dataclass(frozen=True)
class Pool:
    """The actors: how many, and each one's torch threads (= Ray CPUs) or GPUs."""

    replicas: int = 1
    threads: int | None = None
    gpus: float = 0.0
    ray_address: str | None = None

    def check(self) -> None:
        """Raise JobError on a pool no job can run, before anything starts."""
        if self.replicas < 1:
            raise JobError("--replicas must be at least 1")
        if self.threads is not None and self.threads < 1:
            raise JobError("--threads-per-replica must be at least 1")


def start_ray(pool: Pool) -> int:
    """Start or join Ray; the threads of each CPU actor. Raises JobError when the pool would
    leave Ray Data's read tasks no CPU."""
    per_actor = 1 if pool.gpus else (pool.threads or default_threads(pool.replicas))
    try:
        init_ray(
            pool.ray_address,
            num_cpus=None if pool.ray_address else max(os.cpu_count() or 1, per_actor * pool.replicas + 1),
            log_to_driver=False,
            # Ray starts workers at nice 15; the actors' inference is the work that matters.
            system_config={"worker_niceness": 0},
        )
    except RayStartError as exc:
        raise JobError(str(exc)) from None
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 0.0))  # type: ignore[no-untyped-call]
    if pool.ray_address and pool.threads is None and not pool.gpus:
        per_actor = max(1, int(cpus - 1) // pool.replicas)
    needed = (1 if pool.gpus else per_actor) * pool.replicas
    if needed > cpus - 1:
        raise JobError(
            f"the actor pool needs {needed} CPUs ({pool.replicas} replicas x {needed // pool.replicas}) but "
            f"the Ray cluster has {cpus:g}; Ray Data's read tasks need a CPU besides the pool (a pool on "
            "every CPU hangs, ray-project/ray#44687): lower --replicas or --threads-per-replica"
        )
    _data_settings()
    return per_actor


def start_pool(pool: Pool, model: JobModel) -> JobModel:
    """`start_ray`; the model with the threads of each CPU actor."""
    threads = start_ray(pool)
    return replace(model, spec=replace(model.spec, threads=threads))


def _data_settings() -> None:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False  # the job draws its own line
    ctx.print_on_execution_start = False
    # Ray Data logs a failed job's stack traces; the job says what failed in one line (they stay
    # in Ray's ray-data.log).
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)


def map_with_model(dataset: Any, model: JobModel, job: BlockJob, pool: Pool, counter: Any, rows: int) -> Any:
    """`dataset.map_batches` with the model's actor pool, `rows` rows per call. The input is first
    cut into blocks of `rows` rows (streaming): a reader gives one block per small file, and one
    block is one task, which one actor would run alone."""
    import ray.data

    # One CPU per torch thread on CPU; on a GPU, the GPU share and one CPU.
    resources = {"num_gpus": model.gpus, "num_cpus": 1} if model.gpus else {"num_cpus": model.threads}
    return dataset.repartition(target_num_rows_per_block=rows).map_batches(
        ModelActor,
        fn_constructor_args=(model, job, counter),
        compute=ray.data.ActorPoolStrategy(size=pool.replicas),
        batch_size=rows,
        batch_format="pyarrow",
        udf_modifying_row_count=False,
        **resources,
    )


def counter() -> Any:
    """A ProgressCounter actor (no CPU of its own)."""
    import ray

    return ray.remote(num_cpus=0)(ProgressCounter).remote()


def compute_seconds(counter_actor: Any) -> float:
    """Seconds the actors' model computed, summed over the actors (the rest of their time went to
    preparing and finishing rows, and waiting)."""
    import ray

    return float(ray.get(counter_actor.seconds.remote(), timeout=30))


def failure(exc: BaseException) -> str:
    """The one line of an error raised in the actors (Ray wraps it, stack traces included)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in reversed(lines):
        for prefix in ("RuntimeError: ", "ValueError: "):
            if line.startswith(prefix):
                return line[len(prefix) :]
    return f"{type(exc).__name__}: {first_line(exc)}"


@dataclass
class Timeline:
    """When the first results came back and how many rows they were: the start-up, and the
    rate that leaves it out."""

    start: float
    first_at: float | None = None
    first_rows: int = 0
    end: float | None = None

    def note(self, rows: int) -> None:
        if self.first_at is None and rows > 0:
            self.first_at, self.first_rows = time.perf_counter(), rows

    def figures(self, rows: int) -> dict[str, float | None]:
        end = self.end if self.end is not None else time.perf_counter()
        wall = end - self.start
        first = self.first_at if self.first_at is not None else end
        after = end - first
        return {
            "wall_s": round(wall, 3),
            "rows_per_s": round(rows / wall, 3) if wall > 0 else 0.0,
            "startup_s": round(first - self.start, 3),
            "execution_rows_per_s": round((rows - self.first_rows) / after, 3)
            if after > 0 and rows > self.first_rows
            else None,
        }


@contextmanager
def progress_of(
    counter_actor: Any, progress: RowProgress, timeline: Timeline
) -> Iterator[Callable[[], tuple[int, int]]]:
    """Draw `progress` from the counter every 0.2 s while the block runs; yields `poll`, which
    reads the counter (rows, failed). Errors of the actors become JobError."""
    import ray

    stop = threading.Event()

    def poll() -> tuple[int, int]:
        done, failed = ray.get(counter_actor.get.remote(), timeout=30)
        timeline.note(int(done))
        return int(done), int(failed)

    def draw() -> None:
        while not stop.wait(0.2):
            try:
                progress.update(*poll())
            except Exception:  # the counter is gone (shutting down): nothing more to draw
                return

    drawer = threading.Thread(target=draw, name="job-progress", daemon=True)
    drawer.start()
    try:
        yield poll
    except JobError:
        raise
    except Exception as exc:
        if type(exc).__module__.startswith("ray"):
            raise JobError(failure(exc)) from None
        raise
    finally:
        stop.set()
        drawer.join()
        timeline.end = time.perf_counter()
