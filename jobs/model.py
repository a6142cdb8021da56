"""The model an offline job runs, described once by the driver and loaded by each actor.

`--model CKPT` takes the server's defaults (batch limits, request limits, dtype); `--config FILE
--model-name NAME` takes a model entry of a server configuration file with its settings, so that a
job runs a model exactly as `bertserve serve --config FILE` serves it. Flags given to the job
(dtype, threads, GPUs, backend) override both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from bertserve.server import config_file
from bertserve.server import settings as settings_mod
from bertserve.server.checkpoint import Checkpoint, CheckpointError, resolve_checkpoint
from bertserve.server.domain import RequestLimits
from bertserve.server.model_facts import labels_of, max_sequence_length, placed_dtype, request_limits
from bertserve.server.settings import Settings
from bertserve.server.tasks.definition import ModelView
from bertserve.server.tokenization import TextTokenizer
from bertserve.workers import heads
from bertserve.workers.protocol import Task
from bertserve.workers.spec import ReplicaSpec


class ModelError(ValueError):
    """The model cannot be used for the job; the message is one line."""


@dataclass(frozen=True)
class JobModel:
    """How actors load the model (the server's ReplicaSpec) and the limits the task steps and
    the runner apply (the server's request and batch limits, from the same settings). `gpus`:
    per actor (0: CPU). `labels`, `problem_type` and `files_dir` (the small files) are what the
    driver read of the checkpoint when it resolved it."""

    name: str
    spec: ReplicaSpec
    limits: RequestLimits
    max_batch_size: int
    max_batch_tokens: int
    min_padding_efficiency: float = 0.0
    gpus: float = 0.0
    labels: tuple[str, ...] = ()
    problem_type: str = ""
    files_dir: str = ""

    @property
    def threads(self) -> int:
        return self.spec.threads

    def view(self) -> ModelView:
        """Tokenizer, limits, labels and problem type: the tokenizer from the small files the driver
        resolved, or, where this machine lacks them (an actor on another node), from the checkpoint
        resolved again here."""
        files = Path(self.files_dir) if self.files_dir else None
        if files is None or not files.is_dir():
            files = resolve_checkpoint(self.spec.checkpoint, self.spec.revision).files_dir
        return ModelView(
            TextTokenizer(files, self.limits.max_sequence_length),
            self.limits,
            self.labels,
            self.problem_type,
        )


def _settings(model: str | None, config: str | None, model_name: str | None) -> Settings:
    """The settings of the job's model: the defaults for --model, its entry for --config."""
    try:
        if config:
            base = settings_mod.from_sources({"config": config}, env={})
            entries = config_file.model_entries(base)
            names = [e.name for e in entries]
            if not model_name and len(entries) > 1:
                raise ModelError(
                    f"{config} has several models ({', '.join(names)}): choose one with --model-name"
                )
            chosen = [e for e in entries if not model_name or e.name == model_name]
            if not chosen:
                raise ModelError(f"{config} has no model named {model_name!r}; it has {', '.join(names)}")
            return chosen[0].settings
        if not model:
            raise ModelError("give the model: --model CHECKPOINT, or --config FILE --model-name NAME")
        return settings_mod.from_sources({"model": model, "model_name": model_name}, env={})
    except config_file.ConfigError as exc:
        raise ModelError(str(exc)) from None


def resolve(
    *,
    task: Task,
    model: str | None,
    config: str | None = None,
    model_name: str | None = None,
    dtype: str | None = None,
    threads: int = 1,
    gpus: float = 0.0,
    backend: str | None = None,
) -> JobModel:
    """The job's model, checked in the driver before Ray starts: the checkpoint's small files
    are found (a folder, or fetched from the Hub) and its head serves `task`."""
    s = _settings(model, config, model_name)
    if dtype:
        s = replace(s, dtype=dtype)
    if backend:
        s = replace(s, backend=backend)
    try:
        checkpoint: Checkpoint = resolve_checkpoint(s.model, s.revision)
    except CheckpointError as exc:
        raise ModelError(str(exc)) from None
    config_json = checkpoint.config()
    served = heads.possible_tasks(config_json) if s.backend != "fake" else tuple(Task)
    if task not in served:
        raise ModelError(
            f"model {s.served_name!r} ({heads.architecture(config_json)}) does not serve "
            f"{heads.TASK_NAMES[task]}; it serves {heads.names(served)}"
        )
    device = "cuda" if gpus > 0 else "cpu"
    spec = ReplicaSpec(
        model_name=s.served_name,
        checkpoint=checkpoint.checkpoint,
        revision=checkpoint.revision,
        device=device,
        dtype=placed_dtype(s.dtype, device),  # as the server places its replicas
        threads=max(1, threads),
        backend=s.backend,
        fake_delay_ms=s.fake_delay_ms,
        tasks=(task,),
        cpu_linear=s.cpu_linear,
    )
    limits = request_limits(s, max_sequence_length(config_json))
    batch = (s.max_batch_size, s.max_batch_tokens, s.min_padding_efficiency)
    return JobModel(
        s.served_name,
        spec,
        limits,
        *batch,
        gpus=gpus,
        labels=labels_of(config_json),
        problem_type=str(config_json.get("problem_type") or ""),
        files_dir=str(checkpoint.files_dir),
    )


class ModelFlags(Protocol):
    """A job's model flags: --model, or --config with --model-name; --dtype; --backend."""

    @property
    def model(self) -> str | None: ...

    @property
    def config(self) -> str | None: ...

    @property
    def model_name(self) -> str | None: ...

    @property
    def dtype(self) -> str | None: ...

    @property
    def backend(self) -> str | None: ...


def resolve_flags(flags: ModelFlags, task: Task, gpus: float = 0.0) -> JobModel:
    """`resolve` with a job's flags."""
    return resolve(
        task=task,
        model=flags.model,
        config=flags.config,
        model_name=flags.model_name,
        dtype=flags.dtype,
        gpus=gpus,
        backend=flags.backend,
    )


def default_threads(replicas: int) -> int:
    """Torch threads per CPU actor on a local Ray instance: this machine's cores shared evenly."""
    return max(1, (os.cpu_count() or 1) // max(1, replicas))
