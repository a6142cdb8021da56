"""`bertserve batch`: one task over every row of a file, on Ray Data, with the server's task code.

    read (Ray Data's reader) → [limit] → map_batches(ModelActor, ActorPoolStrategy(size=replicas))
        → the driver writes one file from iter_batches, in input order (or Ray's write_* to a folder)

Pitfalls of Ray Data 2.60 that shape it (each has a test; the Ray ones are in jobs/ray_jobs.py):
- An exception escaping the batch function fails the whole job (and `max_errored_blocks` drops
  whole blocks silently): the actor catches per row (jobs/runner.py), so a bad row is a row with
  an `error`, in place.
- A column whose values are all null is typed `null`: `result` has a fixed type per task
  (jobs/batch/arrow.py).
- `write_*` writes a folder of uuid-named files: the single-file output is written by the driver.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bertserve.jobs import model as job_model
from bertserve.jobs import ray_jobs
from bertserve.jobs.batch import files
from bertserve.jobs.batch.arrow import ERROR, RESULT
from bertserve.jobs.batch.block import BatchBlock
from bertserve.jobs.batch.options import TASKS, Columns, Options
from bertserve.jobs.batch.rows import RowTask, options_for
from bertserve.jobs.job_cli import ROWS_PER_CALL
from bertserve.jobs.progress import RowProgress
from bertserve.jobs.ray_jobs import JobError, Pool


@dataclass(frozen=True)
class BatchConfig:
    task: str
    input: str
    output: str | None = None
    output_dir: str | None = None
    model: str | None = None
    config: str | None = None
    model_name: str | None = None
    columns: Columns = field(default_factory=Columns)
    options: Options = field(default_factory=Options)
    pool: Pool = field(default_factory=Pool)
    dtype: str | None = None
    backend: str | None = None
    limit: int | None = None
    rows_per_call: int = ROWS_PER_CALL
    progress: bool = True


def _check(config: BatchConfig) -> tuple[str, str | None]:
    """The input's format and the output's (None: a folder), checked before anything starts."""
    if config.task not in TASKS:
        raise JobError(f"unknown task {config.task!r}; choose one of {', '.join(TASKS)}")
    wrong = options_for(TASKS[config.task], config.options)
    if wrong:
        flags = ", ".join("--" + name.replace("_", "-") for name in wrong)
        raise JobError(f"{flags} does not apply to {config.task}")
    if config.output and config.output_dir:
        raise JobError("give --output or --output-dir, not both")
    config.pool.check()
    if config.limit is not None and config.limit < 1:
        raise JobError("--limit must be at least 1")
    if config.rows_per_call < 1:
        raise JobError("--rows-per-call must be at least 1")
    kind = files.file_format(config.input)
    files.check_readable(config.input)
    out_kind = None if config.output_dir else files.file_format(config.output or config.input)
    return kind, out_kind


def run(config: BatchConfig, stream: Any = None) -> dict[str, Any]:
    """Run the job; the summary. Raises JobError (or DataError, ModelError) with one line."""
    timeline = ray_jobs.Timeline(time.perf_counter())
    kind, out_kind = _check(config)
    task = TASKS[config.task]
    available = files.column_names(config.input, kind)
    rows = RowTask(task, config.columns, config.options, available)
    missing = [c for c in rows.columns if c not in available]
    if missing:
        flag = {v: k for k, v in dataclasses.asdict(config.columns).items()}[missing[0]]
        raise JobError(
            f"{config.input} has no column {missing[0]!r} (it has: {', '.join(available) or 'none'}); "
            f"choose another with --{flag.replace('_', '-')}-column"
        )
    taken = [c for c in (RESULT, ERROR) if c in available]
    if taken:
        raise JobError(f"{config.input} has a column {taken[0]!r} already, which the output adds; rename it")
    model = job_model.resolve_flags(config, task, config.pool.gpus)
    total = files.count_rows(config.input, kind, available)
    if config.limit is not None:
        total = min(total, config.limit)
    model = ray_jobs.start_pool(config.pool, model)
    out_path = config.output_dir or config.output or files.default_output(config.input, config.task)
    block = BatchBlock(rows, struct=(out_kind or kind) == "parquet")
    counter = ray_jobs.counter()
    dataset = files.read(config.input, kind, available)
    if config.limit is not None:
        dataset = dataset.limit(config.limit)
    dataset = ray_jobs.map_with_model(dataset, model, block, config.pool, counter, config.rows_per_call)
    progress = RowProgress(total, stream=stream, enabled=config.progress)
    with ray_jobs.progress_of(counter, progress, timeline) as poll:
        if out_kind is None:
            files.write_dir(dataset, out_path, kind)
            done, failed = poll()
        else:
            done, failed = _write_file(dataset, out_path, out_kind, timeline.note)
    progress.close(done, failed)
    compute_s = ray_jobs.compute_seconds(counter)
    return {
        "rows": done,
        "ok": done - failed,
        "failed": failed,
        **timeline.figures(done),
        "compute_s": round(compute_s, 3),
        "replicas": config.pool.replicas,
        "threads_per_replica": model.threads,
        "device": model.spec.device,
        "output": out_path,
    }


def _write_file(dataset: Any, path: str, kind: str, note: Callable[[int], None]) -> tuple[int, int]:
    """The single output file from the dataset's batches, in input order."""
    out = files.SingleFile(path, kind)
    done = failed = 0
    try:
        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=2):
            out.write(batch)
            done += batch.num_rows
            failed += sum(1 for e in batch.column(ERROR).to_pylist() if e)
            note(done)
    finally:
        out.close()
    return done, failed
