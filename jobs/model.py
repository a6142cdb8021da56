"""The model an offline job runs, described once by the driver and loaded by each actor.

`--model CKPT` takes the server's defaults (batch limits, request limits, dtype); `--config FILE
--model-name NAME` takes a model entry of a server configuration file with its settings, so that a
job runs a model exactly as `bertserve serve --config FILE` serves it. Flags given to the job
(dtype, threads, GPUs, backend) override both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Protocol

from bertserve.server import config_file
from bertserve.server import settings as settings_mod
from bertserve.server.checkpoint import Checkpoint, CheckpointError, resolve_checkpoint
from bertserve.server.domain import RequestLimits
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
    per actor (0: CPU)."""

    name: str
    spec: ReplicaSpec
    limits: RequestLimits
    max_batch_size: int
    max_batch_tokens: int
    min_padding_efficiency: float = 0.0
    gpus: float = 0.0

    @property
    def threads(self) -> int:
        return self.spec.threads

    def view(self) -> ModelView:
        """Tokenizer, limits, labels and problem type, read from the checkpoint's small files."""
        checkpoint = resolve_checkpoint(self.spec.checkpoint, self.spec.revision)
        config = checkpoint.config()
        return ModelView(
            TextTokenizer(checkpoint.files_dir, self.limits.max_sequence_length),
            self.limits,
            labels_of(config),
            str(config.get("problem_type") or ""),
        )


def labels_of(config: dict[str, Any]) -> tuple[str, ...]:
    """config.json's id2label as a tuple in id order (LABEL_i where one is missing)."""
    id2label = config.get("id2label") or {}
    return tuple(str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(len(id2label)))


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
    chosen_dtype = s.dtype
    if chosen_dtype == "auto" and device == "cuda":
        chosen_dtype = "bfloat16"  # as the server places GPU replicas (server/assembly.py)
    spec = ReplicaSpec(
        model_name=s.served_name,
        checkpoint=checkpoint.checkpoint,
        revision=checkpoint.revision,
        device=device,
        dtype=chosen_dtype,
        threads=max(1, threads),
        backend=s.backend,
        fake_delay_ms=s.fake_delay_ms,
        tasks=(task,),
        cpu_linear=s.cpu_linear,
    )
    limits = RequestLimits(
        max_inputs=s.max_inputs_per_request,
        max_text_chars=s.max_text_chars,
        max_top_k=s.max_top_k,
        max_sequence_length=int(config_json.get("max_position_embeddings", 512)),
    )
    batch = (s.max_batch_size, s.max_batch_tokens, s.min_padding_efficiency)
    return JobModel(s.served_name, spec, limits, *batch, gpus=gpus)


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
