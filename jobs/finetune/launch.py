"""Two launchers for the one training function: this process, or Ray Train workers.

- In-process (`--workers 0`): the Hugging Face Trainer here; the output is written to a staging
  folder next to --output and renamed into place when complete.
- Ray Train (`--workers N`): `ray.train.torch.TorchTrainer` with `ScalingConfig(num_workers=N,
  use_gpu=...)` runs `train.train` on every worker (DDP). The Trainer goes through
  `prepare_trainer`; `RayTrainReportCallback` reports each epoch's metrics and weights-only
  checkpoint to Ray (from the first worker only; the others report the metrics). At the end the
  first worker reports the exported folder as the run's last checkpoint, and the driver copies it
  to --output. Ray's storage (checkpoints) lives in a temporary folder unless --storage-path
  names one (a multi-machine cluster needs a path every machine shares). Progress events come back
  through a Ray queue; Ray is started only through `bertserve.workers.ray_init.init_ray`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

from bertserve.jobs.finetune import train as train_mod
from bertserve.jobs.finetune.inputs import JobData
from bertserve.jobs.finetune.progress import Emit
from bertserve.jobs.finetune.recipes import JobConfig

RUN_NAME_PREFIX = "bertserve-finetune"


def staging_dir(output: Path) -> Path:
    """An empty folder beside --output (same file system, so the final rename is atomic)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))


def publish(staged: Path, output: Path) -> None:
    """Move the finished output into place (replacing an existing --output folder)."""
    if output.exists():
        shutil.rmtree(output)
    staged.rename(output)


def run_in_process(job: JobConfig, data: JobData, staged: Path, emit: Emit) -> dict[str, Any]:
    return train_mod.train(job, data, staged, emit=emit)


# ---- Ray Train -----------------------------------------------------------------------------


def local_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpus_per_worker(job: JobConfig) -> int:
    """CPUs each worker reserves (torch uses as many threads): --cpus-per-worker, else this
    machine's CPUs shared among the workers when Ray runs here, else 1."""
    if job.cpus_per_worker:
        return job.cpus_per_worker
    if job.ray_address:
        return 1
    return max(1, local_cpus() // max(1, job.workers))


def run_on_ray(job: JobConfig, data: JobData, staged: Path, emit: Emit) -> dict[str, Any]:
    import ray

    from bertserve.workers.ray_init import init_ray

    per_worker = cpus_per_worker(job)
    started_here = not ray.is_initialized()
    # Ray first: init_ray sets environment that Ray's modules read when they are imported.
    to_terminal = worker_output_to_terminal()
    if not job.ray_address:
        init_ray(None, num_cpus=max(local_cpus(), job.workers * per_worker), log_to_driver=to_terminal)
    else:
        init_ray(job.ray_address, log_to_driver=to_terminal)
    # Ray's own look-ups of "the" cluster (its state API) must find this one, not another Ray
    # instance on the machine.
    previous_address = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    storage = job.storage_path or tempfile.mkdtemp(prefix="bertserve-ray-storage-")
    run_name = f"{RUN_NAME_PREFIX}-{uuid.uuid4().hex[:8]}"
    events: Queue = Queue(maxsize=10_000, actor_options={"num_cpus": 0})
    done = threading.Event()
    drain = threading.Thread(target=_drain, args=(events, emit, done), name="finetune-progress", daemon=True)
    drain.start()
    run_options: dict[str, Any] = {
        "name": run_name,
        "storage_path": storage,
        "checkpoint_config": CheckpointConfig(num_to_keep=1),
        "failure_config": FailureConfig(max_failures=0),
    }
    logging_config = _logging_config()
    if logging_config is not None:  # Train V2 (the default in Ray 2.60)
        run_options["logging_config"] = logging_config
    try:
        trainer = TorchTrainer(
            train_loop_per_worker=worker_main,
            train_loop_config={
                "job": job,
                "data": ray.put(data),
                "events": events,
                "work_dir": str(Path(tempfile.gettempdir()) / run_name),
            },
            scaling_config=ScalingConfig(
                num_workers=job.workers, use_gpu=job.gpus, resources_per_worker=_resources(job, per_worker)
            ),
            run_config=RunConfig(**run_options),
        )
        result = trainer.fit()
        if result.checkpoint is None:
            raise train_mod.TrainingError("the Ray Train run ended without reporting its output")
        with result.checkpoint.as_directory() as exported:
            shutil.copytree(exported, staged, dirs_exist_ok=True)
    finally:
        done.set()
        drain.join(timeout=10)
        _drain_rest(events, emit)
        with contextlib.suppress(Exception):
            events.shutdown()
        if job.storage_path is None:
            shutil.rmtree(storage, ignore_errors=True)
        if previous_address is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = previous_address
        if started_here:
            ray.shutdown()
    import json

    results: dict[str, Any] = json.loads((staged / train_mod.METRICS_FILE).read_text())
    return results


def worker_output_to_terminal() -> bool:
    """Whether Ray copies its workers' console output to this terminal: not unless
    RAY_LOG_TO_DRIVER=1. Ray Train's actors narrate every run (and, with the dashboard off, warn
    that its state API is unavailable); the output stays in Ray's log files
    (/tmp/ray/session_latest/logs). Failures still come back, as TorchTrainer.fit's exception."""
    return os.environ.get("RAY_LOG_TO_DRIVER", "").strip().lower() in ("1", "true", "yes")


def _resources(job: JobConfig, per_worker: int) -> dict[str, float]:
    resources: dict[str, float] = {"CPU": float(per_worker)}
    if job.gpus:
        resources["GPU"] = 1.0
    return resources


def _logging_config() -> Any:
    """Ray Train's own console logs at WARNING (its INFO lines narrate the worker group)."""
    try:
        from ray.train import LoggingConfig
    except ImportError:  # Train V1 (RAY_TRAIN_V2_ENABLED=0) has no LoggingConfig
        return None
    return LoggingConfig(log_level="WARNING")


def _drain(events: Any, emit: Emit, done: threading.Event) -> None:
    from ray.util.queue import Empty

    while not done.is_set():
        try:
            emit(events.get(timeout=0.2))
        except Empty:
            continue
        except Exception:
            return


def _drain_rest(events: Any, emit: Emit) -> None:
    try:
        while not events.empty():
            emit(events.get_nowait())
    except Exception:
        pass


def worker_main(config: dict[str, Any]) -> None:
    """The function each Ray Train worker runs: train.train under DDP, then report the output."""
    import ray
    import ray.train
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer

    class FirstWorkerReport(RayTrainReportCallback):
        """Ray's report callback, with the checkpoint from the first worker only: the others
        find the same files on a shared disk and would copy them again."""

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                super().on_save(args, state, control, **kwargs)  # type: ignore[no-untyped-call]
                return
            metrics: dict[str, Any] = {}
            for log in state.log_history:
                metrics.update(log)
            ray.train.report(metrics=metrics, checkpoint=None)

    logging.getLogger().setLevel(logging.WARNING)  # Ray Train's per-report INFO lines
    job: JobConfig = config["job"]
    data: JobData = ray.get(config["data"])
    events = config["events"]
    rank = ray.train.get_context().get_world_rank()
    work_dir = Path(config["work_dir"])
    export_dir = Path(tempfile.mkdtemp(prefix="bertserve-export-")) if rank == 0 else None
    try:
        results = train_mod.train(
            job,
            data,
            export_dir,
            emit=events.put_nowait if rank == 0 else None,
            work_dir=work_dir,
            extra_callbacks=[FirstWorkerReport()],  # type: ignore[no-untyped-call]
            prepare=prepare_trainer,
        )
        final = dict(results.get("final") or {})
        if export_dir is not None:
            checkpoint = ray.train.Checkpoint.from_directory(str(export_dir))
            ray.train.report(metrics=final, checkpoint=checkpoint, checkpoint_dir_name="export")
        else:
            ray.train.report(metrics=final, checkpoint=None, checkpoint_dir_name="export")
    finally:
        if export_dir is not None:
            shutil.rmtree(export_dir, ignore_errors=True)
        if ray.train.get_context().get_local_rank() == 0:
            shutil.rmtree(work_dir, ignore_errors=True)
