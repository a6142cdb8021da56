"""One fine-tuning run on the driver: check, load, launch, publish.

The output folder and the data are checked before any training starts (and before Ray starts),
so that bad input fails in a second with one line. The run writes into a staging folder beside
--output, renamed into place only when complete: an interrupted run never leaves a folder that
looks like a model.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, TextIO

from bertserve.jobs.data import DataError
from bertserve.jobs.finetune import inputs, launch
from bertserve.jobs.finetune.progress import Emit, Renderer
from bertserve.jobs.finetune.recipes import JobConfig


class FinetuneError(RuntimeError):
    """The job failed; the message is one line."""


def run_job(
    job: JobConfig, *, overwrite: bool = False, emit: Emit | None = None, stream: TextIO | None = None
) -> dict[str, Any]:
    """Fine-tune as `job` says and write --output; returns metrics.json's contents.

    emit: where progress events go (default: a Renderer on `stream`, stderr by default)."""
    output = Path(job.output).expanduser()
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not overwrite:
        raise FinetuneError(f"{output} exists and is not empty; pass --overwrite to replace it")
    show = emit or Renderer(stream or sys.stderr)
    try:
        data = inputs.load(job)
    except DataError as exc:
        raise FinetuneError(str(exc)) from None
    for note in data.notes:
        show({"kind": "note", "text": note})
    _check_model(job)

    staged = launch.staging_dir(output)
    try:
        if job.workers == 0:
            results = launch.run_in_process(job, data, staged, show)
        else:
            results = launch.run_on_ray(job, data, staged, show)
        launch.publish(staged, output)
    except Exception as exc:
        raise FinetuneError(one_line(exc)) from exc
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return results


def _check_model(job: JobConfig) -> None:
    """The base model's config loads here, before workers start (a wrong name fails at once)."""
    from bertserve.jobs.finetune.train import quiet

    quiet()
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(job.model)
    except (OSError, ValueError) as exc:
        raise FinetuneError(f"cannot load the base model {job.model!r}: {one_line(exc)}") from None


def one_line(exc: BaseException) -> str:
    """A failure as one line: the root cause of a Ray Train worker failure, else the message."""
    failures = getattr(exc, "worker_failures", None)
    if failures:
        exc = failures[min(failures)]
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    # Ray wraps worker errors in a traceback: its last line is "ErrorType: message".
    text = lines[-1] if len(lines) > 1 and "Traceback" in str(exc) else lines[0]
    return text if ":" in text else f"{type(exc).__name__}: {text}"
